"""Photo metadata people trust and share with their photo managers: when a photo was taken (and
where that came from), the XMP its sidecar or its file holds (title, description, keywords, rating,
label), and the place its GPS position lies in.

Read at index time from the bytes the indexer reads anyway, and again, without embedding the photo,
when a sidecar changes or when this reading improves (:data:`METADATA_VERSION` is newer than the
one a row was read with).
"""

# Bumped whenever what is read from a file changes: rows read by an older version are read again.
METADATA_VERSION = 1
