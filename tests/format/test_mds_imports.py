"""The format package stays light: optional dependencies are imported only when used."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_format_pulls_no_heavy_or_optional_package():
    code = (
        "import sys, mdsloader.mds\n"
        "from mdsloader import MDSWriter, DatasetReader, ShardReader, read_index\n"
        "heavy = ('pyarrow', 'PIL', 'torch', 'boto3', 'brotli', 'snappy', 'pandas')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
