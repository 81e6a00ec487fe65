"""Record names: one rule (one path component) for pack, the writer, reindex and every index read.

An index whose record-name column holds ``../`` or an absolute path must not send ``unpack`` (or a reader)
outside its folders: it is refused on read, naming the index file and line.
"""

from __future__ import annotations

import io
from pathlib import Path

import attrs
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from tface.core.cli import cli
from tface.core.data.index import (
    Index,
    IndexFormatError,
    check_record_name,
    join_labels,
    read_index,
    shard_path,
    write_index,
)
from tface.core.data.tfrecord import frame, serialize_example
from tface.core.data.unpack import unpack
from tface.core.data.writer import ShardWriter

BAD_NAMES = ["../x", "/abs", "a/b", "", "..", ".", "a\\b", "../../w/evil", "nul\0"]


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(buf, format="JPEG")
    return buf.getvalue()


def data(*args: object):
    return CliRunner().invoke(cli, ["data", *map(str, args)])


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["faces", "ms1m-retina_v2", "a.b", "..x", "x..", "Zoë 李", " space"])
def test_good_names_pass(name):
    assert check_record_name(name) == name
    assert shard_path(Path("/r"), name, 3) == Path("/r") / name / f"{name}-00003.tfrecord"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_everywhere(tmp_path, name):
    with pytest.raises(ValueError, match=r"invalid record name"):
        check_record_name(name)
    with pytest.raises(ValueError, match=r"invalid record name"):
        shard_path(tmp_path, name, 0)
    with pytest.raises(ValueError, match=r"invalid record name"):
        ShardWriter(tmp_path / "w", name)
    with pytest.raises(ValueError, match=r"invalid record name"):
        write_index(tmp_path / "i.txt", [("ok", 0, 0, 0), (name, 0, 0, 1)])
    assert not (tmp_path / "i.txt").exists()
    with pytest.raises(ValueError, match=r"invalid record name"):
        join_labels([], [], name)
    # an index holding it: one error naming the file, the line and the name
    index = tmp_path / "bad.txt"
    index.write_text(f"ok\t0\t0\t0\nok\t0\t10\t1\n{name}\t0\t0\t2\n", encoding="utf-8")
    with pytest.raises(IndexFormatError) as err:
        read_index(index)
    assert str(err.value).startswith(f"{index}:3: invalid record name {name!r}: ")
    assert "\n" not in str(err.value)


def escaping_data_set(tmp_path: Path) -> tuple[Path, Path, Path]:
    """An index whose record name ``../../w/evil`` reaches a real shard two folders up from its root.

    Returns (index, root of the index, the unpack output folder); on today's main, unpack writes
    ``<out>/0/../../w/evil-00000-0.jpg``, i.e. outside ``<out>``.
    """
    base = tmp_path / "a"
    root = base / "b" / "data"
    root.mkdir(parents=True)
    (base / "w" / "evil").mkdir(parents=True)  # so that .../w/evil/../.. resolves
    # the shard the name points at: root/../../w/evil/../../w/evil-00000.tfrecord == base/w/evil-00000.tfrecord
    (base / "w" / "evil-00000.tfrecord").write_bytes(frame(serialize_example({"image": [jpeg()]})))
    index = root / "bad.txt"
    index.write_text("../../w/evil\t0\t0\t0\n")
    return index, root, base / "b" / "out"


def test_unpack_refuses_an_index_that_escapes_and_writes_nothing(tmp_path):
    index, _, out = escaping_data_set(tmp_path)
    before = tree(tmp_path)
    result = data("unpack", index, out)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {index}:1: invalid record name '../../w/evil': ")
    assert len(result.output.strip().splitlines()) == 1
    assert tree(tmp_path) - before <= {"a/b/out"}  # at most the (empty) output folder
    assert not out.exists() or not any(out.iterdir())


def test_unpack_never_joins_an_unchecked_name_even_from_a_hand_built_index(tmp_path):
    """The second guard: an Index built in code (no read_index) still cannot make unpack write outside."""
    index_file, root, out = escaping_data_set(tmp_path)
    shard = root / "../../w/evil/../../w/evil-00000.tfrecord"
    index = Index(path=index_file, files=(shard,), file_id=np.zeros(1, dtype=np.int32),
                  offsets=np.zeros(1, dtype=np.int64), labels=np.zeros(1, dtype=np.int64),
                  keys=(("../../w/evil", 0),), lines=np.ones(1, dtype=np.int64))
    before = tree(tmp_path)
    with pytest.raises(IndexFormatError, match=rf"{index_file}:1: the file name '0/../../w/evil-00000-0.jpg' "
                                               "would land outside"):
        unpack(index, out)
    assert {p for p in tree(tmp_path) - before if not p.startswith("a/b/out")} == set()
    # a good name next to it still unpacks
    good = attrs.evolve(index, files=(tmp_path / "a" / "w" / "evil-00000.tfrecord",), keys=(("evil", 0),))
    assert unpack(good, out).files == 1 and (out / "0" / "evil-00000-0.jpg").read_bytes() == jpeg()


def test_verify_reports_the_bad_index(tmp_path):
    index, _, _ = escaping_data_set(tmp_path)
    result = data("verify", index)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {index}:1: invalid record name '../../w/evil': ")
    assert "OK" not in result.output


def test_other_index_readers_refuse_it_too(tmp_path):
    index, _, _ = escaping_data_set(tmp_path)
    for args in (("stats", index), ("subset", index, tmp_path / "sub.txt", "--identities", "1")):
        result = data(*args)
        assert result.exit_code == 1, (args, result.output)
        assert f"{index}:1: invalid record name '../../w/evil'" in result.output
    assert not (tmp_path / "sub.txt").exists()


def test_record_name_options_are_bad_parameters(tmp_path):
    with ShardWriter(tmp_path, "pk", pack_index=True) as w:
        w.add(jpeg(), 0, path="/imgs/0.jpg")
    (tmp_path / "labels.txt").write_text("/imgs/0.jpg 0\n")
    result = data("reindex", tmp_path / "pk" / "pk.index", tmp_path / "labels.txt", tmp_path / "o.txt",
                  "--record-name", "../x")
    assert result.exit_code == 2 and "invalid record name '../x'" in result.output
    assert not (tmp_path / "o.txt").exists()
    imgs = tmp_path / "imgs" / "id0"
    imgs.mkdir(parents=True)
    (imgs / "0.jpg").write_bytes(jpeg())
    result = data("pack", tmp_path / "imgs", tmp_path / "packed", "--name", "../x")
    assert result.exit_code == 2 and "invalid record name '../x'" in result.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.txt").exists()
    # a record name taken from the pack index's file name is the file's fault: exit 1, naming it
    odd = tmp_path / "pk" / "..index"
    odd.write_bytes((tmp_path / "pk" / "pk.index").read_bytes())
    result = data("reindex", odd, tmp_path / "labels.txt", tmp_path / "o.txt")
    assert result.exit_code == 1 and f"{odd}: invalid record name '.'" in result.output
