"""The browser UI and JSON API (see issue 3); nothing here yet."""
