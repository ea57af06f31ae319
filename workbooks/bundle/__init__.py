"""`.wbundle`: a signed zip of workbook.org + workbook.html (+ shareable files), and its safe unbundling."""

from workbooks.bundle.manifest import ENTRY_HTML, ENTRY_ORG, MANIFEST
from workbooks.bundle.pack import make_bundle
from workbooks.bundle.unpack import BundleTooLarge, Caps, UnsafeBundle, unbundle, verify_bundle

__all__ = ["ENTRY_HTML", "ENTRY_ORG", "MANIFEST", "BundleTooLarge", "Caps", "UnsafeBundle", "make_bundle", "unbundle", "verify_bundle"]
