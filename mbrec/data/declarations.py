"""Where dataset declarations come from: the built-in ``properties/dataset/NAME.yaml`` files and the
user's own files, declared outside the repository with ``--dataset-file FILE``.

A user's file has the keys of a built-in one (``behaviors``, ``target_behavior``, ``prepare:`` with
``format``, ``files``, ...) and names the dataset after its stem: ``~/data/my_shop.yaml`` declares
``my_shop``; its prepared folder and its results are filed under that name. Its ``prepare.raw``
(a folder or file; relative to the YAML's folder) says where the raw data is, so the dataset runs
by name from any directory.

The files a command declares are kept in ``$MBREC_DATASET_FILES`` (paths joined by ``os.pathsep``),
so that worker processes (a local Ray's, a grid's) find the same declarations; a user may also set
the variable instead of passing the flag.

Imports: mbrec.utils, mbrec.data.errors and the standard library only.
"""

import os
from pathlib import Path

from mbrec.data.errors import DataPreparationError
from mbrec.utils import PROPERTIES_DIR, read_yaml

DATASET_FILES_ENV = "MBREC_DATASET_FILES"
DATASET_FILE_HELP = ("your own dataset, declared in a YAML outside the repository and named after the file "
                     "(datasets/README.md, 'Your own dataset'); repeatable")
# Keys a declaration must give (``target_behavior`` may be left out for single-behavior data).
REQUIRED_KEYS = ("behaviors", "prepare")


def builtin_dataset_files():
    """name -> path of every YAML in ``properties/dataset`` (aliases included)."""
    return {path.stem: path for path in sorted((PROPERTIES_DIR / "dataset").glob("*.yaml"))}


def declared_dataset_files():
    """name -> path of every user declaration in ``$MBREC_DATASET_FILES`` (checked on the way)."""
    declared = {}
    for text in filter(None, os.environ.get(DATASET_FILES_ENV, "").split(os.pathsep)):
        path = Path(text)
        if path.stem in declared and declared[path.stem] != path:
            raise DataPreparationError(
                f"Two dataset files declare {path.stem!r}: {declared[path.stem]} and {path}; rename one")
        declared[path.stem] = path
    return declared


def dataset_files():
    """name -> declaring YAML, built-in and user-declared together."""
    return {**builtin_dataset_files(), **declared_dataset_files()}


def dataset_names():
    return sorted(dataset_files())


def check_declaration(path):
    """Refuse a user's dataset file that cannot work, naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DataPreparationError(f"Dataset file not found: {path}")
    if path.suffix not in (".yaml", ".yml"):
        raise DataPreparationError(f"Dataset file {path}: expected a .yaml file named after the dataset")
    builtin = builtin_dataset_files()
    if path.stem in builtin and builtin[path.stem].resolve() != path.resolve():
        raise DataPreparationError(
            f"Dataset file {path} declares {path.stem!r}, a built-in dataset ({builtin[path.stem]}); name the "
            f"file after your own dataset so that its prepared data and results stay apart from the built-in one")
    try:
        declaration = read_yaml(path)
    except Exception as error:  # noqa: BLE001 (any YAML error: one line naming the file)
        raise DataPreparationError(f"Dataset file {path} is not valid YAML: {error}") from None
    if not isinstance(declaration, dict):
        raise DataPreparationError(f"Dataset file {path} must hold a mapping (behaviors, prepare, ...)")
    refers = {"alias_of", "extends"} & set(declaration)  # another dataset's YAML gives the rest
    missing = [key for key in REQUIRED_KEYS if key not in declaration]
    if missing and not refers:
        raise DataPreparationError(
            f"Dataset file {path} lacks {', '.join(missing)}; see datasets/README.md, 'Your own dataset'")
    if not refers and not (declaration.get("prepare") or {}).get("format"):
        raise DataPreparationError(f"Dataset file {path} lacks prepare.format (the raw format to read)")
    return declaration


def use_dataset_files(paths):
    """Declare the datasets of ``paths`` for this process and the processes it starts.

    Returns the names declared. Raises DataPreparationError for a file that cannot work.
    """
    names = []
    known = [Path(text) for text in filter(None, os.environ.get(DATASET_FILES_ENV, "").split(os.pathsep))]
    for path in paths or ():
        path = Path(path).expanduser().resolve()
        check_declaration(path)
        if path not in known:
            known.append(path)
        names.append(path.stem)
    if known:
        os.environ[DATASET_FILES_ENV] = os.pathsep.join(str(path) for path in known)
        declared_dataset_files()  # two files with one name: refused now, not at first use
    return names


def declaration_file(name):
    """The YAML declaring dataset ``name`` (no alias resolution), or None."""
    return dataset_files().get(name)


def raw_location(spec_file, declaration):
    """The ``prepare.raw`` path of a declaration, relative to its file's folder; None when not given."""
    raw = (declaration.get("prepare") or {}).get("raw")
    if raw is None:
        return None
    path = Path(str(raw)).expanduser()
    return path if path.is_absolute() else (Path(spec_file).parent / path).resolve()
