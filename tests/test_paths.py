"""``resolves_within``: a path a request names must stay inside its root after following symlinks."""

from __future__ import annotations

import os

from engine.paths import resolves_within


def test_paths_inside_stay_inside_and_links_out_are_caught(tmp_path):
    root = tmp_path / "run"
    (root / "a").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "in").symlink_to(root / "a")
    assert resolves_within(str(root / "a" / "inputs.pb"), [str(root)])
    assert resolves_within(str(root / "new" / "deeper" / "inputs.pb"), [str(root)])  # not there yet
    assert resolves_within(str(root), [str(root)])
    assert not resolves_within(str(root / "out" / "inputs.pb"), [str(root)])  # a link below the root, out
    assert resolves_within(str(root / "in" / "inputs.pb"), [str(root)])  # a link that stays inside
    assert not resolves_within(str(root / ".." / "elsewhere" / "x"), [str(root)])
    assert not resolves_within("relative/inputs.pb", [str(root)])
    assert not resolves_within(str(root / "a\x00b"), [str(root)])


def test_a_root_that_is_itself_a_link_still_holds_its_own_paths(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert resolves_within(os.path.join(str(link), "x", "inputs.pb"), [str(link)])
    assert resolves_within(os.path.join(str(real), "x"), [str(link)])  # the same place, by its real name
