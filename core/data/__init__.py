"""Photos in, before any network: decoding (images), scanning and splitting a labelled folder (datasets),
uploads (ingest, upload_manifest, camera), the samples, generated check sets (synthetic), augmentation (augment),
batches (loader), the decoded-image cache (imagecache), previews, and the cleaning loop's corrections (overrides)."""
