"""Data: readers (sources) and writers (formats) of the standard on-disk formats, and the device-resident loader."""
