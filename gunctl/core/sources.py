"""What `gunctl predict` reads: files, folders (recursive), globs, .zip archives and videos.

``collect`` turns the command line's sources into a list of ``Item``s, each with a unique
relative name for its annotated copy, plus one problem line for each thing it left out
(a symlink leading outside its folder, an unsafe zip member, a path that matches nothing).
Reading an item's bytes is left to the caller (DataLoader workers, for images).
"""

from __future__ import annotations

import glob
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gunctl.config import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from gunctl.core.archive import MAX_MEMBER_BYTES, member_problem, read_member

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
        if path.is_dir():
            _folder(path, found, names)
        elif path.is_file():
            _file(path, found, names)
        elif glob.has_magic(source):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                found.problems.append(f"{source}: no file matches this pattern")
            for match in matches:
                target = Path(match)
                (_folder if target.is_dir() else _file)(target, found, names)
        else:
            found.problems.append(f"{source}: no such file or folder")
    return found


def read_item(item: Item, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of an image item (a file or a zip member), at most ``limit`` of them."""
    if item.member is None:
        with item.path.open("rb") as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"larger than {limit:,} bytes")
        return data
    with zipfile.ZipFile(item.path) as archive:
        return read_member(archive, archive.getinfo(item.member), limit)


def _file(path: Path, found: Collected, names: _Names) -> None:
    suffix = path.suffix.lower()
    if suffix == ".zip":
        _archive(path, found, names)
        return
    kind = "video" if suffix in VIDEO_SUFFIXES else "image"  # anything else: decoded by content
    found.items.append(Item(kind, path, None, names.unique(path.name)))


def _folder(root: Path, found: Collected, names: _Names) -> None:
    resolved = root.resolve()
    base = root.resolve().name or "root"
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in [*subdirs, *files]:
            entry = Path(directory) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(resolved):
                found.problems.append(f"{entry}: symlink leading outside {root}; left out")
        for name in sorted(files):
            entry = Path(directory) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(resolved):
                continue
            kind = _kind(name)
            if kind is None:
                found.ignored.append(str(entry))
                continue
            relative = entry.relative_to(root).as_posix()
            found.items.append(Item(kind, entry, None, names.unique(f"{base}/{relative}")))


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
    for member in members:
        if member.is_dir():
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
        else:
            output = names.unique(f"{path.stem}/{member.filename}")
            found.items.append(Item("image", path, member.filename, output))


def _kind(name: str) -> str | None:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


class _Names:
    """Unique relative output paths: ``a/1.jpg``, then ``a/1_2.jpg`` for a second one."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def unique(self, wanted: str) -> str:
        parts = [p for p in PurePosixPath(wanted.replace("\\", "/")).parts if p not in ("..", "/")]
        candidate = PurePosixPath(*parts) if parts else PurePosixPath("item")
        stem, suffix, number = candidate.stem, candidate.suffix, 1
        while candidate.as_posix().lower() in self.taken:
            number += 1
            candidate = candidate.with_name(f"{stem}_{number}{suffix}")
        self.taken.add(candidate.as_posix().lower())
        return candidate.as_posix()
