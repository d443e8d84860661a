"""Vendor file formats. Each module registers itself; add a new vendor with one import line below."""

from qdebug.formats.base import FORMATS, VendorFile, load_vendor_file, register_format  # noqa: F401

# Registration lines: one per vendor format module.
try:  # the modules arrive with the vendor-formats issue; the registry works without them
    from qdebug.formats import calib_table, hisi, rknn1, rknn2  # noqa: F401
except ImportError:  # pragma: no cover
    pass
