// The duplicates page: choosing another keeper rule shows the groups again at once (the page's
// Content-Security-Policy allows scripts from the server only, so no inline handler does this).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const keep = document.getElementById("keep");
  if (keep) keep.addEventListener("change", () => keep.form.submit());
});
