"""Storage, names and decoding: where bytes come from and how they become pixels.

`storage` reads, writes and lists local paths and `s3://` URIs (any S3-compatible endpoint); `names` holds
every file-name rule (image and manifest names, stems, keys, URIs of names that are not UTF-8); `inputs`
lists what a bulk-inference run should process (a folder, a prefix or a manifest) with each input's
identity; `decode` turns PNG / JPEG / TIFF / DICOM bytes into a float image in [0, 1] plus its metadata, or a
`DecodeError`; `rle` is the compact mask encoding; `preflight` checks a request before Ray starts;
`local_s3` starts a loopback S3 endpoint (moto) for the demo and tests.
"""
