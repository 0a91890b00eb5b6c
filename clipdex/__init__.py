"""clipdex: text-to-image semantic search and zero-shot tagging for your own pictures."""

__version__ = "0.1.0"
