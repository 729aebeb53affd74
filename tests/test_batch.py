"""swishnet batch: Ray Data over classify_file, on a local two-CPU Ray with the tiny model and generated files.

Ray is required (the batch extra; `make test` installs it): these tests fail, never skip, without it.
One small local Ray serves the module (2 CPUs, 128 MB of object store, no dashboard).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

try:
    import ray
except ImportError:  # pragma: no cover
    pytest.fail("Ray is missing: install the batch extra (pip install -e '.[batch]'; make test does)", pytrace=False)

from bench import batch as batch_bench
from bench.__main__ import QUICK
from service.batch import BatchOptions, ClassifyWorker, ModelFiles, rows_from_cluster, run_batch
from service.batch_output import OutputLock, done_files, error_row, make_writer, read_rows
from service.batch_sources import SourceError, expand_sources
from service.cli import build_parser, main
from service.stream import StreamConfig, classify_file
from tests.conftest import make_signal
from tests.test_docker import DOCKER_DIR as DOCKER, find_hadolint

pytestmark = pytest.mark.timeout(120)

RATE = 16_000
GOOD = ["speech.wav", "sub/music.flac", "sub/deeper/mixed.wav", "sub/stereo-44k.wav"]
BAD = ["bad/empty.wav", "bad/corrupt.flac", "bad/short.wav"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False,
             logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    """Four readable recordings in nested folders, three that cannot be classified, and a text file."""
    root = tmp_path_factory.mktemp("archive")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "bad").mkdir()
    sf.write(root / "speech.wav", make_signal("speech", 2.5, seed=1), RATE)
    sf.write(root / "sub/music.flac", make_signal("music", 3.0, seed=2), RATE)
    mixed = np.concatenate([make_signal("speech", 2.0, seed=3), make_signal("noise", 2.0, seed=3)])
    sf.write(root / "sub/deeper/mixed.wav", mixed, RATE, subtype="PCM_16")
    stereo = np.stack([make_signal("music", 2.0, seed=4, sample_rate=44_100)] * 2, axis=1)
    sf.write(root / "sub/stereo-44k.wav", stereo, 44_100)
    (root / "bad/empty.wav").write_bytes(b"")
    (root / "bad/corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    sf.write(root / "bad/short.wav", make_signal("speech", 0.2), RATE)
    (root / "notes.txt").write_text("not audio, and not a source: folders contribute audio files only\n")
    return root


def batch(*args: object) -> int:
    return main(["batch", "--no-progress", *map(str, args)])


def classify_json(capsys, model: Path, path: Path | str, *options: str) -> dict:
    """What `swishnet classify --format json` prints for one file."""
    capsys.readouterr()
    assert main(["classify", "--model", str(model), *options, str(path)]) == 0
    return json.loads(capsys.readouterr().out)


def by_file(rows: list[dict]) -> dict[str, dict]:
    files = [row["file"] for row in rows]
    assert len(files) == len(set(files)), "a file has more than one row"
    return {row["file"]: row for row in rows}


def without_error(row: dict) -> dict:
    assert row["error"] is None
    return {key: value for key, value in row.items() if key != "error"}


@pytest.fixture(scope="module")
def first_run(local_ray, audio_dir, tiny_model_path, tmp_path_factory):
    """The whole folder through two workers, one file per task; (status, summary line, rows by file)."""
    out = tmp_path_factory.mktemp("first")
    capture = tmp_path_factory.mktemp("capture") / "stdout"
    with capture.open("w") as stdout:
        saved, sys.stdout = sys.stdout, stdout
        try:
            status = batch(audio_dir, "--out", out, "--model", tiny_model_path, "--workers", 2, "--files-per-task", 1)
        finally:
            sys.stdout = saved
    return status, capture.read_text(), by_file(read_rows(out))


# ---- results


def test_every_file_once_with_the_rows_of_classify(first_run, audio_dir, tiny_model_path, capsys):
    rows = first_run[2]
    assert set(rows) == {str(audio_dir / name) for name in GOOD + BAD}
    for name in GOOD:
        path = audio_dir / name
        assert without_error(rows[str(path)]) == classify_json(capsys, tiny_model_path, path)


def test_unreadable_files_become_error_rows(first_run, audio_dir, tiny_model_path, capsys):
    status, summary, rows = first_run
    for name in BAD:
        row, path = rows[str(audio_dir / name)], audio_dir / name
        assert {row[key] for key in ("duration", "label", "probs", "segments")} == {None}
        capsys.readouterr()
        assert main(["classify", "--model", str(tiny_model_path), str(path)]) == 1
        assert capsys.readouterr().err == f"swishnet: error: {path}: {row['error']}\n"  # classify's message
    assert status == 1  # as classify: some files failed, the others are classified
    assert summary.startswith(f"swishnet batch: {len(GOOD + BAD)} files: {len(GOOD + BAD)} classified (3 errors), "
                              "0 already done; ")
    assert "audio-s per wall-s" in summary


def test_analysis_options_reach_the_workers(local_ray, audio_dir, tiny_model_path, tmp_path, capsys):
    options = ["--window", "2", "--hop", "0.2", "--min-segment", "0.5", "--min-pause", "0.8",
               "--silence-threshold", "-40"]
    path = audio_dir / "sub/deeper/mixed.wav"
    assert batch(path, "--out", tmp_path, "--model", tiny_model_path, *options) == 0
    (row,) = read_rows(tmp_path)
    expected = classify_json(capsys, tiny_model_path, path, *options)
    assert without_error(row) == expected
    assert expected != classify_json(capsys, tiny_model_path, path)  # the options changed something


def test_parquet_and_uris(local_ray, first_run, audio_dir, tiny_model_path, tmp_path):
    """--format parquet holds the JSON rows; a manifest's file:// URI is read through fsspec."""
    uri = (audio_dir / "speech.wav").as_uri()
    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# two files\n{audio_dir / 'sub/music.flac'}\n\n{uri}\n{audio_dir / 'bad/corrupt.flac'}\n")
    out = tmp_path / "out"
    assert batch(manifest, "--out", out, "--model", tiny_model_path, "--format", "parquet") == 1
    assert [path.suffix for path in out.glob("part-*")] == [".parquet"]
    rows, expected = by_file(read_rows(out)), first_run[2]
    for name in ("sub/music.flac", "bad/corrupt.flac"):
        assert rows[str(audio_dir / name)] == expected[str(audio_dir / name)]
    assert rows[uri] == {**expected[str(audio_dir / "speech.wav")], "file": uri}


def test_ray_client_drivers_take_their_rows_from_an_actor(local_ray, first_run, audio_dir, classifier):
    """--address ray://...: Ray Data runs in a RowSource actor on the cluster (the same rows reach the driver).
    Here on the local Ray; a Ray Client connection to a `ray start --head` was checked by hand (docs/batch.md)."""
    files = [str(audio_dir / name) for name in (GOOD[0], BAD[0])]
    options = BatchOptions(workers=1, files_per_task=1, progress=False)
    rows = by_file(list(rows_from_cluster(ray, files, ModelFiles.of(classifier), StreamConfig(), options, None)))
    assert rows == {name: first_run[2][name] for name in files}


# ---- resuming and retries


def test_a_rerun_classifies_only_what_is_missing(local_ray, audio_dir, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "out"
    manifest = tmp_path / "some.csv"
    manifest.write_text("path,label\n" + "".join(f"{audio_dir / name},x\n" for name in GOOD[:2]))
    common = ["--out", out, "--model", tiny_model_path, "--workers", 2, "--shard-files", 2]
    assert batch(manifest, *common) == 0
    capsys.readouterr()
    assert batch(audio_dir, *common) == 1
    assert "files: 5 classified (3 errors), 2 already done" in capsys.readouterr().out
    rows = by_file(read_rows(out))  # each file exactly once
    assert set(rows) == {str(audio_dir / name) for name in GOOD + BAD}
    assert len(list(out.glob("part-*.jsonl"))) == 1 + 3  # two runs; shards of at most 2 rows
    assert batch(audio_dir, *common) == 0  # nothing left: Ray is not even needed
    assert "files: 0 classified (0 errors), 7 already done" in capsys.readouterr().out
    assert batch(audio_dir, *common, "--retry-errors") == 1  # they fail again, and replace their old rows
    assert "files: 3 classified (3 errors), 4 already done" in capsys.readouterr().out
    assert by_file(read_rows(out)) == rows
    summaries = [json.loads(path.read_text()) for path in out.glob("_run-*.json")]  # one per run that classified
    assert sorted((run["classified"], run["errors"], run["skipped"]) for run in summaries) == [
        (2, 0, 0), (3, 3, 4), (5, 3, 2)]


@pytest.mark.parametrize("out_format", ["jsonl", "parquet"])
def test_retried_errors_leave_their_shards(tmp_path, out_format):
    good = {"file": "a.wav", "duration": 1.0, "label": "music", "probs": {"speech": 0.1, "music": 0.9, "noise": 0.0},
            "segments": [{"start": 0.0, "end": 1.0, "label": "music", "confidence": 0.9}], "error": None}
    writer = make_writer(out_format, tmp_path, "1", 2, ["speech", "music", "noise"])
    for row in [good, error_row("b.wav", "corrupt"), error_row("c.wav", "empty")]:
        writer.write(row)
    writer.close()
    assert done_files(tmp_path) == {"a.wav", "b.wav", "c.wav"}
    assert done_files(tmp_path, retry_errors=True) == {"a.wav"}
    assert [path.name for path in tmp_path.iterdir()] == [f"part-1-00000.{out_format}"]  # the other one emptied
    assert read_rows(tmp_path) == [good]


def test_a_dead_runs_unfinished_shard_is_kept(tmp_path):
    rows = [{"file": f"a{i}.wav", "error": "x"} for i in range(2)]
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (tmp_path / "part-1-00000.jsonl.partial").write_text(lines + '{"file": "a2.wav", "dur')  # cut mid-row
    (tmp_path / "part-1-00000.parquet.partial").write_bytes(b"PAR1")  # never finished: its files are redone
    assert done_files(tmp_path) == {"a0.wav", "a1.wav"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["part-1-00000.jsonl"]
    assert (tmp_path / "part-1-00000.jsonl").read_text() == lines


def die_once(source, classifier, config, *, file, victim: str, marker: str):
    """classify_file, except that the first worker to reach ``victim`` is killed (SIGKILL) on the spot."""
    if file == victim:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return classify_file(source, classifier, config, file=file)


def test_a_killed_worker_is_replaced_and_its_files_retried(local_ray, audio_dir, classifier, tmp_path, capsys):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    files = [str(audio_dir / name) for name in GOOD]
    marker = tmp_path / "killed"
    hook = functools.partial(die_once, victim=files[1], marker=str(marker))
    summary = run_batch(files, tmp_path / "out", classifier, options=BatchOptions(workers=2, files_per_task=1,
                                                                                   progress=False), classify=hook)
    assert marker.exists()  # a worker really died
    assert (summary.classified, summary.errors) == (len(files), 0)
    rows = by_file(read_rows(tmp_path / "out"))
    assert set(rows) == set(files)
    assert without_error(rows[files[1]]) == classify_file(files[1], classifier).to_dict()


def test_the_bench_section_runs(local_ray, classifier):
    """python -m bench batch, in its quick mode on the tiny model: only the structure, never a timing."""
    result = batch_bench.run(dataclasses.replace(QUICK, file_s=8.0), {"tiny": classifier}, [])
    assert (result["files"], result["duration_s"]) == (batch_bench.QUICK_FILES, 8.0)
    runners = {"classify (1 process)", "batch, 1 worker", "batch, 2 workers"}
    assert set(result["commands"]["x_real_time"]) == runners
    assert set(result["jobs"]["x_real_time"]) == runners - {"classify (1 process)"}
    assert result["jobs"]["scaling_efficiency"]["n"] == 1 and result["jobs"]["ray_start_s"] is None
    assert "scaling efficiency" in batch_bench.render(result)


# ---- the worker itself, without Ray


def test_a_worker_streams_local_files_and_opens_uris(audio_dir, classifier):
    """Local paths reach classify_file as paths (it decodes them block by block), URIs as open file objects."""
    seen = []

    def record(source, classifier, config, *, file):
        seen.append("path" if isinstance(source, str) else "file object" if hasattr(source, "read") else source)
        return classify_file(source, classifier, config, file=file)

    worker = ClassifyWorker(ModelFiles.of(classifier), StreamConfig(), threads=1, classify=record)
    path = audio_dir / "speech.wav"
    rows = [json.loads(text) for text in worker({"file": np.array([str(path), path.as_uri()], dtype=object)})["row"]]
    assert seen == ["path", "file object"]
    assert rows[1] == {**rows[0], "file": path.as_uri()}


def write_noise(path: Path, minutes: int) -> Path:
    block = make_signal("noise", 10.0, seed=5)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as handle:
        for _ in range(6 * minutes):
            handle.write(block)
    return path


def test_a_workers_memory_does_not_grow_with_the_file(tmp_path, classifier):
    """numpy's peak while a worker classifies 1 minute and 8 minutes of audio: the same (about 17 MB with
    this engine), and below the longer file decoded whole (31 MB as float32)."""
    worker = ClassifyWorker(ModelFiles.of(classifier), StreamConfig(), threads=1)
    peaks = {}
    for minutes in (1, 8):
        path = write_noise(tmp_path / f"{minutes}.wav", minutes)
        tracemalloc.start()
        try:
            (text,) = worker({"file": np.array([str(path)], dtype=object)})["row"]
            peaks[minutes] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert json.loads(text)["duration"] == 60.0 * minutes
    assert peaks[8] < 1.25 * peaks[1] and peaks[8] < 8 * 60 * RATE * 4


# ---- sources and usage errors (no Ray)


def test_sources_folders_globs_and_manifests(audio_dir, tmp_path):
    everything = sorted(str(audio_dir / name) for name in GOOD + BAD)
    assert expand_sources([str(audio_dir)]) == everything
    assert expand_sources([str(audio_dir / "sub" / "**" / "*.wav")]) == sorted(
        str(audio_dir / name) for name in GOOD if name.startswith("sub/") and name.endswith(".wav"))
    listing = tmp_path / "files.lst"
    listing.write_text("# comment\nrelative.wav\n\n/abs/b.flac\ns3://bucket/c.mp3\n")
    table = tmp_path / "corpus.csv"
    table.write_text("clip_id,path\n1,clips/x.flac\n2,/abs/b.flac\n")
    assert expand_sources([str(listing), str(table), str(audio_dir / "speech.wav")]) == sorted(
        [str(tmp_path / "relative.wav"), "/abs/b.flac", "s3://bucket/c.mp3", str(tmp_path / "clips/x.flac"),
         str(audio_dir / "speech.wav")])


@pytest.mark.parametrize("content,message", [("name\nx.wav\n", "'path' column"), (None, "no such file")])
def test_bad_sources_are_refused(tmp_path, content, message):
    source = tmp_path / "list.csv"
    if content is not None:
        source.write_text(content)
    with pytest.raises(SourceError, match=message):
        expand_sources([str(source)])


def test_usage_errors_exit_2(audio_dir, tiny_model_path, tmp_path, capsys):
    assert batch(tmp_path / "absent", "--out", tmp_path / "out") == 2
    assert "absent: no such file or folder" in capsys.readouterr().err
    assert batch(audio_dir, "--out", tmp_path / "out", "--hop", "0.015") == 2
    assert "swishnet: error: --hop " in capsys.readouterr().err
    (tmp_path / "out").mkdir()
    with OutputLock(tmp_path / "out"):
        assert batch(audio_dir, "--out", tmp_path / "out", "--model", tiny_model_path) == 2
    assert "another 'swishnet batch' is writing to" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        batch(audio_dir, "--out", tmp_path / "out", "--workers", "0")
    assert exit_info.value.code == 2


def test_the_rayjob_runs_swishnet_batch_on_the_batch_image():
    """docker/rayjob.yaml (KubeRay) against the CLI and docker/Dockerfile.batch; the manifest was also checked
    against KubeRay 1.7's RayJob schema by hand (docs/batch.md), which the tests cannot download."""
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    command = shlex.split(job["spec"]["entrypoint"])
    assert command[:2] == ["swishnet", "batch"]
    args = build_parser().parse_args(command[1:])  # exits on an option the command does not have
    cluster = job["spec"]["rayClusterSpec"]
    head, workers = cluster["headGroupSpec"], cluster["workerGroupSpecs"]
    pods = [head["template"]["spec"]] + [group["template"]["spec"] for group in workers]
    dockerfile = (DOCKER / "Dockerfile.batch").read_text()
    assert f"ARG RAY_VERSION={cluster['rayVersion']}\n" in dockerfile
    for pod in pods:
        (container,) = pod["containers"]
        assert container["image"].rsplit("/", 1)[-1].startswith("swishnet-batch:")
        assert {mount["name"] for mount in container["volumeMounts"]} <= {volume["name"] for volume in pod["volumes"]}
    assert head["rayStartParams"]["num-cpus"] == "0"  # actors run on the workers
    limits = [group["template"]["spec"]["containers"][0]["resources"]["limits"] for group in workers]
    worker_cpus = sum(group["replicas"] * float(limit["cpu"]) for group, limit in zip(workers, limits))
    assert args.workers * args.cpus_per_worker <= worker_cpus
    mounts = {mount["mountPath"] for mount in head["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert args.address == "auto" and args.sources[0] in mounts and args.out.parent.as_posix() in mounts
    hadolint = find_hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (it is in the dev extra)")
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile.batch")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_runtime_never_imports_ray(audio_dir, tmp_path):
    """Without Ray, pyarrow, pandas or fsspec: every service module imports, `swishnet --help` works, and
    `swishnet batch` says how to install the extra (status 2)."""
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {{"ray", "pyarrow", "pandas", "fsspec"}}:
                    raise ImportError(f"{{name}} is blocked")
        sys.meta_path.insert(0, Block())
        import importlib, pkgutil, service
        for module in pkgutil.walk_packages(service.__path__, "service."):
            importlib.import_module(module.name)
        from service.cli import build_parser, main
        build_parser()
        assert main(["batch", {str(audio_dir)!r}, "--out", {str(tmp_path / "out")!r}]) == 2
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "swishnet batch needs Ray" in result.stderr and "[batch]" in result.stderr
