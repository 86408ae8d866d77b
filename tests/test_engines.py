"""pipeline.engines: the one registry of engines, shared by the config checks."""
from __future__ import annotations

import pytest

from pipeline.engines import get_engine


def test_get_engine_names() -> None:
    for name in ("text", "tesseract", "olmocr", "command"):
        assert get_engine(name).name == name
    with pytest.raises(ValueError):
        get_engine("nope")


def test_config_checks_and_the_registry_know_the_same_engines() -> None:
    from pipeline import config, engines

    assert config.ENGINES == tuple(engines.ENGINES) == ("olmocr", "tesseract", "text", "command")
    with pytest.raises(ValueError, match="use olmocr, tesseract, text or command"):
        get_engine("nope")
