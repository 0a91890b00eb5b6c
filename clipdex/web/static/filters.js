// Search filters in words: what the page says about the filters in use and about an empty answer.
// Pure functions, no DOM: app.js puts their strings into the page with textContent.

export const FILTERS = ["tag", "folder", "from", "to"];
const SHOWN_TAGS = 6;

/** The non-empty filters, as URL parameters; ``read(name)`` gives each one's raw value. */
export function pickFilters(read) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = (read(name) || "").trim();
    if (value) params.set(name, value);
  }
  return params;
}

/** The filters in use, one phrase each ("tag “red”", "taken 2020-01-01 to 2020-12-31"). */
export function describeFilters(filters) {
  const words = [];
  if (filters.get("tag")) words.push(`tag “${filters.get("tag")}”`);
  if (filters.get("folder")) words.push(`folder ${filters.get("folder")}`);
  const from = filters.get("from"), to = filters.get("to");
  if (from && to) words.push(`taken ${from} to ${to}`);
  else if (from) words.push(`taken since ${from}`);
  else if (to) words.push(`taken until ${to}`);
  return words;
}

/** One reason the server gave for an empty answer (``why_empty``, see clipdex.search.filters), in words. */
export function reasonText(reason) {
  const day = (iso) => String(iso).slice(0, 10);
  switch (reason.kind) {
    case "empty_library": return "The library holds no pictures yet.";
    case "unknown_tag": {
      const known = reason.known || [];
      const shown = known.slice(0, SHOWN_TAGS).join(", ") + (known.length > SHOWN_TAGS ? ", …" : "");
      return `No picture has the tag “${reason.tag}”` + (known.length ? ` (tags: ${shown}).` : ".");
    }
    case "empty_folder": return `No indexed picture lies under ${reason.folder}.`;
    case "empty_date_range": return "The date range ends before it starts.";
    case "none_in_date_range":
      return `No picture was taken in that range (capture dates run from ${day(reason.first)} to ${day(reason.last)}).`;
    case "undated":
      return `${reason.count === 1 ? "1 picture has" : `${reason.count} pictures have`} no capture date `
        + "and are left out by date filters.";
    case "no_overlap": return "Each filter matches some pictures, but no picture matches them all.";
    case "only_self": return "The only match is the picture itself.";
    default: return null;
  }
}
