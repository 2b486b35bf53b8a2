"""Raw-format readers: one module per raw format family, each a function ``read(files, options)``
from raw files (role -> path) to one columnar table (:class:`~mbrec.data.readers.table.ReaderOutput`).

Imports: mbrec.data.errors, mbrec.data.synthetic (the generator) and numpy/pandas/scipy only; never
torch, recbole or ``prepare`` (which imports this registry). A new raw format is one module here
plus one line in ``FORMATS``.
"""

from dataclasses import dataclass

from mbrec.data.readers import csv_log, diffurec, ijcai15, matrices, retailrocket, synthetic, tianchi


@dataclass(frozen=True)
class RawFormat:
    """How ``prepare`` reads one raw format.

    ``read(files, options)`` returns a ReaderOutput. ``default_files`` maps role -> file name read
    when the YAML names none (None: the single file given, or the only file in the folder).
    ``expected_files(options)``, when given, replaces ``files or default_files`` (files named by
    options). ``sources()``, when given, replaces the raw files altogether (generated data: the
    paths it returns are fingerprinted instead).
    """

    read: object
    default_files: dict
    expected_files: object = None
    sources: object = None


# format name (the YAML's ``prepare.format``) -> how to read it
FORMATS = {
    "tianchi": RawFormat(tianchi.read_tianchi, tianchi.DEFAULT_FILES),
    "ijcai15": RawFormat(ijcai15.read_ijcai15, ijcai15.DEFAULT_FILES),
    "retailrocket": RawFormat(retailrocket.read_retailrocket, retailrocket.DEFAULT_FILES),
    "matrices": RawFormat(matrices.read_matrices, matrices.DEFAULT_FILES, expected_files=matrices.expected_files),
    "diffurec": RawFormat(diffurec.read_diffurec, diffurec.DEFAULT_FILES),
    "csv": RawFormat(csv_log.read_csv_log, csv_log.DEFAULT_FILES),
    "synthetic": RawFormat(synthetic.read_synthetic, synthetic.DEFAULT_FILES, sources=synthetic.raw_sources),
}
