"""Plugins by task type: third-party plugins found through the ``taskdeck.plugins`` entry point (a pip
install), resource plugins put under the plugin manager, and the default-for-task-types override."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest

from engine.engine import Engine, EngineConfig
from engine.plugins.registry import PluginNotFoundError
from engine.plugins.resource_manager import ResourcePluginManager

PLUGINS = textwrap.dedent('''
    from engine.plugins.core import PhaseInfo, Plugin, Transition
    from engine.plugins.resources import ResourcePlugin

    class EchoPlugin(Plugin):
        id = "echo"
        task_types = ("echo",)

        async def handle(self, tctx):
            return Transition.of(PhaseInfo.success())

        async def abort(self, tctx):
            pass

        async def finalize(self, tctx):
            pass

    class WidgetPlugin(ResourcePlugin):
        id = "widget"
        task_types = ("widget",)

        def build_identity_resource(self, metadata):
            return {"apiVersion": "example.org/v1", "kind": "Widget"}

        def build_resource(self, tctx):
            return {"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {}, "spec": {}}

        def get_task_phase(self, tctx, resource):
            return PhaseInfo.running()

    raise_on_import = None
''')


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution on sys.path declaring three entry points: a plugin, a resource plugin, a broken one."""
    (tmp_path / "thirdparty_plugins.py").write_text(PLUGINS)
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('this plugin needs a library that is missing')\n")
    dist = tmp_path / "thirdparty_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[taskdeck.plugins]\necho = thirdparty_plugins:EchoPlugin\nwidget = thirdparty_plugins:WidgetPlugin\n"
        "broken = broken_plugin:Plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield tmp_path


def test_entry_point_plugins_are_registered_and_a_broken_one_is_skipped(installed, tmp_path, caplog):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False))
    assert engine.registry.resolve("echo").id == "echo"
    widget = engine.registry.resolve("widget")
    assert isinstance(widget, ResourcePluginManager) and widget.plugin.id == "widget"
    assert "broken" in caplog.text and "skipped" in caplog.text
    assert engine.registry.resolve("python").id == "container"  # nothing else moved


def test_default_for_task_types_overrides_a_plugins_claim(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False,
                                 plugin_for_task_types={"dask": "container", "my-type": "core-sleep"}))
    assert engine.registry.resolve("dask").id == "container"
    assert engine.registry.resolve("my-type").id == "core-sleep"
    with pytest.raises(PluginNotFoundError, match="there are"):
        Engine(EngineConfig(data_dir=tmp_path / "data2", serve=False, plugin_for_task_types={"dask": "nope"}))


def test_the_cli_names_a_bad_plugin_override_in_one_line(tmp_path):
    for value, expected in (("dask", "is not TASK_TYPE=PLUGIN_ID"), ("dask=nope", "no plugin 'nope'")):
        done = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path / "d"), "--headless",
                               "--plugin-for", value], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 3, done.stderr  # usage line(s) + the error, no traceback
