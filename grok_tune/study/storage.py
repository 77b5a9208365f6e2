"""A study's storage: small files written whole or not at all, locally or in the cloud, and the
checks a storage location passes before anything is written."""

from __future__ import annotations

from grok_tune.study.errors import Refused
from grok_tune.study_files import DEFAULT_STORAGE, folder_problem, is_uri


def write_text(uri: str, text: str) -> None:
    """Write a small file whole or not at all (aside, then moved), locally or in the cloud."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(f"{path}.tmp") as out:
        out.write(text.encode())
    fs.move(f"{path}.tmp", path)


def read_text(uri: str) -> str | None:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def check_storage(storage: str) -> None:
    """Refuse a storage location that cannot hold a study, before anything starts or is written:
    an unknown scheme, an unreachable bucket, a file where a folder belongs, a folder that cannot
    be written. Creates nothing."""
    if not storage.strip():  # '' would make the current folder the storage, silently
        raise Refused(f"--storage {storage!r}: empty: name a folder (default {DEFAULT_STORAGE})")
    if is_uri(storage):
        import pyarrow as pa
        import pyarrow.fs as pafs

        try:
            fs, path = pafs.FileSystem.from_uri(storage)
            info = fs.get_file_info(path)
        except (pa.ArrowException, ValueError, OSError) as err:
            raise Refused(
                f"--storage {storage}: cannot use it: {str(err).splitlines()[0]}"
            ) from None
        if info.type == pafs.FileType.File:
            raise Refused(f"--storage {storage}: is a file, not a folder")
        return
    problem = folder_problem(storage)
    if problem:
        raise Refused(f"--storage {storage}: {problem}")
