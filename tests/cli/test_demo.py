"""`make demo` runs `lookalike demo`: the whole product on the embedded setup."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from click.testing import CliRunner

from cli.demo import DEMO_TRAIN_CONFIG
from cli.main import lookalike
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def test_demo_goes_from_sample_catalog_to_similar_items(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    runner = CliRunner()
    env = {"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_BROKER_URL": ""}
    result = runner.invoke(lookalike, ["demo", "--limit", "1200", "--epochs", "2", "--steps-per-epoch", "25",
                                       "--examples", "3", "--no-serve"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "1200 created" in result.output
    assert re.search(r"serving index i-\S+ \(1200 images", result.output)
    # three example items, five results each, mostly of the query's own category
    same = [int(m) for m in re.findall(r"-> (\d)/5 same category", result.output)]
    assert len(same) == 3, result.output
    rate = re.search(r"over 200 catalog items, (\d+)% of the top-5", result.output)
    assert rate and int(rate.group(1)) >= 60, result.output
    # the held-out comparison: raw pixels, frozen ImageNet features and the trained model, with numbers
    rows = _comparison_rows(result.output)
    trained = f"trained m-retrain-1 (small_cnn, {DEMO_TRAIN_CONFIG['model']['embedding_dim']}-d)"
    assert set(rows) == {"raw pixels (784-d, unit norm)", "frozen ImageNet Lite0 trunk, 64 px (1280-d)",
                         trained}, result.output
    assert "(ankle-boot, bag, shirt, sneaker; never trained on): 480 catalog images" in result.output
    _assert_consistent_verdicts(result.output, rows, trained=trained)
    # the trained row is the retrain job's own holdout score, and the model served is the trained one
    assert "serving index" in result.output and "model m-retrain-1," in result.output
    # a second run reuses the catalog (idempotent import) and retrains against the active model
    again = runner.invoke(lookalike, ["demo", "--limit", "1200", "--epochs", "1", "--steps-per-epoch", "5",
                                      "--no-serve"],
                          env=env, catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 1200 unchanged" in again.output
    rows_again = _comparison_rows(again.output)
    retrained = trained.replace("m-retrain-1", "m-retrain-2")
    assert "previously active m-retrain-1" in rows_again and retrained in rows_again, again.output
    assert rows_again["previously active m-retrain-1"] == rows[trained], again.output
    _assert_consistent_verdicts(again.output, rows_again, trained=retrained)


def _comparison_rows(output: str) -> dict[str, tuple[float, float]]:
    """``name -> (MAP@R, P@1)`` from the demo's held-out comparison table."""
    table = output.split("embedding", 1)[1].split("best on MAP@R", 1)[0]
    rows = {m.group(1): (float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^   (\S.*?)\s{2,}([01]\.\d{3})  ([01]\.\d{3})$", table, re.MULTILINE)}
    assert all(0.0 < mapr <= 1.0 and 0.0 < p1 <= 1.0 for mapr, p1 in rows.values()), table
    return rows


def _assert_consistent_verdicts(output: str, rows: dict[str, tuple[float, float]], *, trained: str) -> None:
    """The stated winner and every "beats / does NOT beat" line agree with the numbers printed."""
    best = re.search(r"best on MAP@R \(([01]\.\d{3})\): (.+)$", output, re.MULTILINE)
    assert best, output
    assert best.group(2) == max(rows, key=lambda name: rows[name][0]), output
    assert float(best.group(1)) == max(mapr for mapr, _ in rows.values())
    trained_map = rows[trained][0]
    for reference, name in (("raw pixels", "raw pixels (784-d, unit norm)"),
                            ("the frozen ImageNet trunk", "frozen ImageNet Lite0 trunk, 64 px (1280-d)")):
        line = re.search(rf"the trained model (beats|does NOT beat) {reference}: MAP@R ([01]\.\d{{3}}) vs "
                         rf"([01]\.\d{{3}}) \(([+-]\d\.\d{{3}})\)", output)
        assert line, output
        assert float(line.group(2)) == trained_map and float(line.group(3)) == rows[name][0], output
        assert (line.group(1) == "beats") == (trained_map > rows[name][0]), output
    plain = "so on these categories plain pixel distance ranks better than the trained model"
    assert (plain in output) == (trained_map <= rows["raw pixels (784-d, unit norm)"][0]), output


def test_demo_ends_serving_the_api_and_the_web_ui(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_BROKER_URL": "",
           "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "demo", "--limit", "300", "--epochs", "1", "--steps-per-epoch", "5",
         "--examples", "1", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line)
            if "need a key" in line:
                break
        text = "".join(lines)
        similar = re.search(r"curl '(http://127\.0\.0\.1:\d+/api/v1/items/\S+/similar\?k=5)'", text)
        upload = re.search(r"curl -F image=@(\S+) -F k=5 '(\S+)'", text)
        assert similar and upload, text
        deadline = time.monotonic() + 60
        while True:  # gunicorn is starting
            try:
                # connect within 5 s; the first answer waits for a worker to boot (torch, the index)
                response = requests.get(similar.group(1), timeout=(5, 120))
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, text
                time.sleep(0.3)
        assert response.status_code == 200 and len(response.json()["results"]) == 5
        with open(upload.group(1), "rb") as image:
            found = requests.post(upload.group(2), files={"image": image}, data={"k": "5"}, timeout=30)
        assert found.status_code == 200 and len(found.json()["results"]) == 5, found.text
        page = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # what Ctrl-C does to gunicorn, more or less
        process.wait(60)


def test_demo_refuses_a_busy_port_before_doing_any_work(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(lookalike, ["demo", "--bind", f"127.0.0.1:{port}"],
                                    env={"LOOKALIKE_HOME": str(tmp_path / "home"), "LOOKALIKE_BROKER_URL": ""})
    assert result.exit_code != 0
    assert f"cannot serve on 127.0.0.1:{port}" in result.output
    assert not (tmp_path / "home" / "lookalike.db").exists()
