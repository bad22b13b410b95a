"""Photo files: the formats read (:mod:`.formats`), and reading, hashing, decoding, EXIF and the
models' preprocessing (:mod:`.decode`). No model, database or index here."""
