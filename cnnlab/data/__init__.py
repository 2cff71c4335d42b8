"""Data: readers for the standard on-disk formats, and the in-memory device-resident loader."""
