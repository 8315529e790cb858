"""Labelled data: records and UTKFace names, labels files, where images come from and how they are split, and
the decode-once cache.
"""

from agegender._lazy import lazy_exports

_EXPORTS = {
    "Record": "records", "ScanResult": "records", "GENDERS": "records", "RACES": "records",
    "AGE_BUCKETS": "records", "age_bucket": "records", "scan_utkface": "records", "iter_image_files": "records",
    "read_labels": "labels", "Source": "sources", "parse_source": "sources", "scan": "sources",
    "stratified_split": "sources", "read_split": "sources", "select": "sources", "folder_split": "sources",
    "build_cache": "cache", "cache_dir": "cache",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
