"""What `gunctl predict` reads: files, folders (recursive), globs, .zip archives and videos.

``collect`` turns the command line's sources into a list of ``Item``s, each with a unique
relative name for its annotated copy, plus one problem line for each thing it left out
(a symlink leading outside its folder or in a loop, a FIFO, device or socket, an unsafe,
encrypted or unreadable zip member, a name held twice in a zip, a path that matches nothing).
Reading an item's bytes is left to the caller (DataLoader workers, for images); ``read_item``
reads only regular files, opened without blocking (``fileio.open_regular``).

Output names (``_Names``), one rule: the relative path of the source (a folder's name, then
the path inside it; an archive's stem, then the member), with the suffix of the file that is
written (``.jpg``, ``.jpeg`` or ``.png`` kept; any other image gets ``.jpg`` appended: it is
written as JPEG); when that name (case-insensitively) or a folder of that name is taken, the
stem gets ``_2``, ``_3``... The name is final: the annotated copy is written there and the
JSONL's ``output`` names it.
"""

from __future__ import annotations

import glob
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gunctl.config import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from gunctl.core.archive import (
    MAX_MEMBER_BYTES,
    duplicates,
    member_problem,
    read_member,
    unreadable,
)
from gunctl.core.fileio import not_regular, open_regular

WRITTEN_SUFFIXES = (".jpg", ".jpeg", ".png")  # annotated images keep these; others get .jpg

MAX_ZIP_MEMBERS = 100_000  # far above any real archive of images; refuses a crafted index


@dataclass(frozen=True)
class Item:
    kind: str  # "image" or "video"
    path: Path  # the file, or the archive that holds the member
    member: str | None  # the zip member's name, or None
    output: str  # relative path of its annotated copy under --out (unique within a call)

    @property
    def name(self) -> str:
        """How people see it: the path, or archive:member."""
        return f"{self.path}:{self.member}" if self.member else str(self.path)


@dataclass
class Collected:
    items: list[Item]
    problems: list[str]  # "name: what is wrong", one line each
    ignored: list[str]  # files in folders and archives that are not images or videos


def collect(sources: list[str] | tuple[str, ...]) -> Collected:
    found = Collected([], [], [])
    names = _Names()
    for source in sources:
        path = Path(source)
        if os.path.lexists(path):
            _entry(path, found, names)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                found.problems.append(f"{source}: no file matches this pattern")
            for match in matches:
                _entry(Path(match), found, names)
        else:
            found.problems.append(f"{source}: no such file or folder")
    return found


def read_item(item: Item, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of an image item (a file or a zip member), at most ``limit`` of them.
    OSError (NotRegularFile for a FIFO swapped in meanwhile) or ValueError when it fails."""
    if item.member is None:
        with open_regular(item.path) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"larger than {limit:,} bytes")
        return data
    with zipfile.ZipFile(item.path) as archive:
        return read_member(archive, archive.getinfo(item.member), limit)


def _entry(path: Path, found: Collected, names: _Names) -> None:
    """A path named on the command line or matched by a glob: a folder, or a regular file."""
    if path.is_dir():
        _folder(path, found, names)
        return
    reason = not_regular(path)
    if reason:
        found.problems.append(f"{path}: {reason}; left out")
        return
    _file(path, found, names)


def _file(path: Path, found: Collected, names: _Names) -> None:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        _archive(path, found, names)
        return
    kind = "video" if suffix in VIDEO_SUFFIXES else "image"  # anything else: decoded by content
    found.items.append(Item(kind, path, None, names.unique(path.name, kind)))


def _folder(root: Path, found: Collected, names: _Names) -> None:
    """Every image and video under ``root`` (links inside it followed, not walked into)."""
    resolved = root.resolve()
    base = resolved.name or "root"
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in subdirs:
            entry = Path(directory) / name
            if entry.is_symlink() and not _inside(entry, resolved):
                found.problems.append(f"{entry}: symlink leading outside {root}; left out")
        for name in sorted(files):
            entry = Path(directory) / name
            if entry.is_symlink() and not _inside(entry, resolved):
                reason = not_regular(entry) or f"symlink leading outside {root}"
                found.problems.append(f"{entry}: {reason}; left out")
                continue
            kind = _kind(name)
            if kind is None:
                found.ignored.append(str(entry))
                continue
            reason = not_regular(entry)
            if reason:
                found.problems.append(f"{entry}: {reason}; left out")
                continue
            relative = entry.relative_to(root).as_posix()
            output = names.unique(f"{base}/{relative}", kind)
            found.items.append(Item(kind, entry, None, output))


def _inside(entry: Path, root: Path) -> bool:
    """Whether the link ``entry`` leads inside ``root`` (False for a loop)."""
    try:
        return entry.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python before 3.13)
        return False


def _archive(path: Path, found: Collected, names: _Names) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        found.problems.append(f"{path}: unreadable zip ({exc})")
        return
    if len(members) > MAX_ZIP_MEMBERS:
        found.problems.append(f"{path}: {len(members):,} members, limit {MAX_ZIP_MEMBERS:,}")
        return
    repeated = duplicates(members)
    for name, count in repeated.items():
        found.problems.append(f"{path}:{name}: {count} members of this name; the last is read")
    last = {member.filename: member for member in members}
    for member in members:
        if member.is_dir() or last[member.filename] is not member:
            continue
        reason = member_problem(member)
        if reason:
            found.problems.append(f"{path}:{member.filename}: unsafe member left out ({reason})")
            continue
        kind = _kind(member.filename)
        if kind is None:
            found.ignored.append(f"{path}:{member.filename}")
        elif kind == "video":
            found.ignored.append(f"{path}:{member.filename} (videos are read from files only)")
        elif member.file_size > MAX_MEMBER_BYTES:
            found.problems.append(
                f"{path}:{member.filename}: {member.file_size:,} bytes, limit {MAX_MEMBER_BYTES:,}"
            )
        elif reason := unreadable(member):
            found.problems.append(f"{path}:{member.filename}: {reason}; left out")
        else:
            output = names.unique(f"{path.stem}/{member.filename}", "image")
            found.items.append(Item("image", path, member.filename, output))


def _kind(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


class _Names:
    """Unique relative output paths (the rule in this module's docstring): ``a/1.jpg``, then
    ``a/1_2.jpg`` for a second one; ``a/1`` (written as JPEG) is ``a/1.jpg`` too, so it also
    gets a number rather than overwriting it."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def unique(self, wanted: str, kind: str = "image") -> str:
        parts = [p for p in PurePosixPath(wanted.replace("\\", "/")).parts if p not in ("..", "/")]
        candidate = PurePosixPath(*parts) if parts else PurePosixPath("item")
        if kind == "image" and candidate.suffix.lower() not in WRITTEN_SUFFIXES:
            candidate = candidate.with_name(candidate.name + ".jpg")
        top, number = candidate.parts[0], 1
        while len(candidate.parts) > 1 and self._under_a_file(candidate):
            number += 1  # a folder named like an output file: number the top folder
            candidate = PurePosixPath(f"{top}_{number}", *candidate.parts[1:])
        stem, suffix, number = candidate.stem, candidate.suffix, 1
        while self._lower(candidate) in self.files | self.folders:
            number += 1
            candidate = candidate.with_name(f"{stem}_{number}{suffix}")
        self.files.add(self._lower(candidate))
        self.folders.update(self._lower(p) for p in candidate.parents)
        return candidate.as_posix()

    def _under_a_file(self, candidate: PurePosixPath) -> bool:
        return any(self._lower(p) in self.files for p in candidate.parents)

    @staticmethod
    def _lower(path: PurePosixPath) -> str:
        return path.as_posix().lower()
