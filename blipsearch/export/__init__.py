"""What a library writes out for other tools to read: XMP sidecars with its captions and tags
(:mod:`.sidecars`)."""
