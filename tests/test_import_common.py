"""``model.importers.common``: the hashing, room check and save-and-refuse every importer shares."""

from __future__ import annotations

import errno
import hashlib

import pytest
import torch

from model.bundle import BundleError
from model.importers.common import hash_files, refuse_without_room, sha256, write_file


def test_sha256_reads_in_chunks_and_equals_hashlib(tmp_path):
    path = tmp_path / "weights.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert sha256(path, chunk=1000) == hashlib.sha256(data).hexdigest()


def test_hash_files_names_each_file_skips_the_missing_and_says_so(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.json"
    a.write_bytes(b"a" * 2000)
    b.write_bytes(b"{}")
    said = []
    hashes = hash_files([a, None, b], said.append)
    assert hashes == {"a.pt": sha256(a), "b.json": sha256(b)}
    assert said == ["hashing a.pt (2 KB)", "hashing b.json (0 KB)"]


def test_refuse_without_room_names_memory_then_disk(tmp_path, monkeypatch):
    out = tmp_path / "out.dalle.safetensors"
    monkeypatch.setattr("model.device.available_memory", lambda device: 10**9)
    with pytest.raises(ValueError, match=r"needs about 2\.0 GB of memory, 1\.0 GB .* bf16"):
        refuse_without_room(2 * 10**9, 1, out, torch.float32)
    full = type("Usage", (), {"free": 5 * 10**6})
    monkeypatch.setattr("shutil.disk_usage", lambda path: full)
    with pytest.raises(ValueError, match=r"has 5 MB free; the bundle needs about 6 MB"):
        refuse_without_room(1, 6 * 10**6, out)
    refuse_without_room(10**8, 10**6, out)  # both fit: no error


def test_write_file_turns_every_refusal_into_one_line_naming_the_file(tmp_path):
    out = tmp_path / "vae.safetensors"
    said = []

    def disk_full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ValueError) as caught:
        write_file(out, said.append, disk_full)
    assert str(caught.value) == f"{out}: cannot save: No space left on device"
    assert said == [f"writing {out}"]

    def inconsistent(path):
        raise BundleError(path, "cannot save an inconsistent bundle: x")

    with pytest.raises(ValueError) as caught:
        write_file(out, said.append, inconsistent)
    assert type(caught.value) is ValueError
    assert str(caught.value) == f"model bundle {out}: cannot save an inconsistent bundle: x"

    written = []
    assert write_file(out, said.append, written.append) == out
    assert written == [out]
