"""pandas as the package uses it for tables of file names (labels, splits, predictions): import ``pd`` from here.

pandas 3 keeps text in pyarrow arrays whenever pyarrow is installed (the ``ray`` extra brings it, and so do many
other packages), and pyarrow refuses the surrogate escapes that hold file names which are not UTF-8, so such a
name would crash ``evaluate`` and the split and labels readers. Python's own string storage keeps them, byte for
byte, as pandas 2 did by default.
"""

import pandas as pd

pd.set_option("mode.string_storage", "python")

__all__ = ["pd"]
