"""The conversion cache: keys, the lock between sessions, and entries that appear whole or not at all."""

import multiprocessing
import time

import pytest

from workers.coreml.cache import FACTS, ConversionCache, cache_key


def test_key_depends_on_every_field_and_not_on_order():
    base = {"model_sha256": "a", "converter": "harness", "coremltools": "9.0", "attention": "split_einsum_v2",
            "precision": "fp16", "resolution": 512, "deployment_target": "macOS13"}
    assert cache_key(base) == cache_key(dict(reversed(list(base.items()))))
    keys = {cache_key({**base, k: "other"}) for k in base}
    assert len(keys) == len(base) and cache_key(base) not in keys


def _hold(root: str, key: str, seconds: float, started) -> None:
    with ConversionCache(root).lock(key):
        started.set()
        time.sleep(seconds)


@pytest.mark.slow
def test_a_second_holder_waits_for_the_first(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    started = ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), "k", 1.5, started))
    holder.start()
    assert started.wait(30)
    with ConversionCache(tmp_path).lock("k") as waited:
        pass
    holder.join()
    assert waited > 1.0
    with ConversionCache(tmp_path).lock("other") as waited:  # other keys never wait
        assert waited < 0.5


def test_a_failed_conversion_leaves_no_entry(tmp_path):
    cache = ConversionCache(tmp_path)
    with cache.lock("k"), pytest.raises(RuntimeError):
        with cache.staging("k") as tmp:
            (tmp / "unet.mlpackage").mkdir()
            raise RuntimeError("converter crashed")
    assert not cache.entry("k").exists() and cache.facts("k") is None
    assert list(cache.root.iterdir()) == [cache.root / "k.lock"]
    with cache.lock("k"), cache.staging("k") as tmp:
        (tmp / FACTS).write_text('{"key": "k"}')
    assert cache.facts("k") == {"key": "k"}
