"""``detstack deploy k8s``: options, errors naming the bad value, output to stdout or a folder."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest
import yaml

from cli.main import main
from serve import _k8s_cli
from serve._k8s import render_manifests
from serve._k8s_config import K8sConfig
from serve._k8s_output import MARKER

REQUIRED = ["deploy", "k8s", "--repository", "s3://my-bucket/model_repository", "--model", "det"]


def _k8s_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detstack")
    _k8s_cli.register(parser.add_subparsers(dest="command"))
    deploy = parser._subparsers._group_actions[0].choices["deploy"]
    return deploy._subparsers._group_actions[0].choices["k8s"]


def test_every_option_of_deploy_k8s_is_explained_in_help():
    actions = [a for a in _k8s_parser()._actions if a.option_strings and a.dest != "help"]
    assert {a.option_strings[0] for a in actions} >= {
        "--repository", "--model", "--s3-secret", "--token-secret", "--replicas", "--min",
        "--max", "--gpus", "--image", "--namespace", "--target-queue-ms", "--output", "--kserve",
    }  # fmt: skip
    for action in actions:
        assert action.help and len(action.help) > 15, action.option_strings


def test_deploy_is_a_subcommand_of_detstack_and_help_does_not_load_the_renderer(capsys):
    code = (
        "import sys\n"
        "from cli.main import build_parser\n"
        "build_parser()\n"
        "print(sorted(m for m in ('serve._k8s', 'serve._k8s_output') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "k8s", "--help"])
    assert exit_info.value.code == 0
    assert "--target-queue-ms" in capsys.readouterr().out


def test_the_yaml_stream_on_stdout_is_the_rendering_and_holds_no_token(capsys, monkeypatch):
    token = "a-real-looking-token-0123456789-abcdefgh"
    monkeypatch.setenv("DETSTACK_API_TOKEN", token)
    assert main([*REQUIRED, "--namespace", "vision"]) == 0
    out = capsys.readouterr().out
    assert token not in out
    assert "@@" not in out  # no placeholder left behind either
    documents = list(yaml.safe_load_all(out))
    expected = render_manifests(
        K8sConfig("s3://my-bucket/model_repository", model="det", namespace="vision")
    )
    assert documents == expected
    assert main([*REQUIRED, "--kserve"]) == 0
    out = capsys.readouterr().out
    assert token not in out and "$(DETSTACK_API_TOKEN)" in out


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--repository", "model_repository"], "'model_repository'"),
        (["--repository", "https://bucket/prefix"], "'https://bucket/prefix'"),
        (["--repository", "s3://Bad_Bucket/prefix"], "'Bad_Bucket'"),
        (["--namespace", "Vision_Team"], "namespace 'Vision_Team'"),
        (["--s3-secret", "AWS_Creds"], "S3 Secret name 'AWS_Creds'"),
        (["--token-secret", "Token"], "token Secret name 'Token'"),
        (["--name", "1st-fleet"], "name '1st-fleet'"),
        (["--name", "a" * 46], "at most 45"),
        (["--model", "bad/model"], "model name 'bad/model'"),
        (["--model", "_hidden"], "model name '_hidden'"),
        (["--min", "5", "--max", "2"], "--min 5 is more than --max 2"),
        (["--replicas", "3", "--max", "6"], "--replicas 3 fixes the number of pods"),
        (["--replicas", "0"], "--replicas must be a whole number from 1"),
        (["--gpus", "0"], "--gpus must be a whole number from 1 to 16, got 0"),
        (["--target-queue-ms", "0"], "--target-queue-ms must be"),
        (["--target-queue-ms", "nan"], "got nan"),
        (["--memory", "16 GB"], "'16 GB'"),
        (["--cpu", "four"], "'four'"),
        (["--image", "my image"], "'my image'"),
        (["--kserve", "--image", "ghcr.io/me/triton:1"], "'ghcr.io/me/triton:1'"),
        (["--kserve", "--s3-endpoint-url", "http://minio:9000"], "serving.kserve.io/s3-endpoint"),
        (["--s3-endpoint-url", "ftp://minio:9000"], "'ftp://minio:9000'"),
    ],
)
def test_a_bad_value_is_a_one_line_error_that_names_it(capsys, arguments, named):
    argv = list(REQUIRED)
    for flag in arguments[::2]:  # a flag given in `arguments` replaces the required one
        if flag in argv:
            index = argv.index(flag)
            del argv[index : index + 2]
    assert main([*argv, *arguments]) == 1
    err = capsys.readouterr().err
    assert err.startswith("detstack deploy: error: ")
    assert named in err
    assert len(err.strip().splitlines()) == 1


def test_the_model_name_is_required_and_so_is_the_repository(capsys):
    with pytest.raises(SystemExit):
        main(["deploy", "k8s", "--repository", "s3://b/p"])
    assert "--model" in capsys.readouterr().err


def test_output_dir_writes_files_a_kustomization_and_the_adapter_rule(tmp_path, capsys):
    out = tmp_path / "k8s"
    assert main([*REQUIRED, "--output", str(out)]) == 0
    kustomization = yaml.safe_load((out / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    for name in kustomization["resources"]:
        assert (out / name).read_text(encoding="utf-8").startswith(MARKER)
    assert (out / "prometheus-adapter" / "configmap.yaml").is_file()
    assert (out / "prometheus-adapter" / "values.yaml").is_file()
    assert "kubectl apply -k" in capsys.readouterr().out
    # Rendering again over our own files is fine.
    assert main([*REQUIRED, "--output", str(out), "--max", "8"]) == 0
    assert "maxReplicas: 8" in next(out.glob("horizontalpodautoscaler-*.yaml")).read_text()


def test_output_dir_never_overwrites_a_file_detstack_did_not_write(tmp_path, capsys):
    out = tmp_path / "k8s"
    out.mkdir()
    mine = out / "kustomization.yaml"
    mine.write_text("resources: [my-own.yaml]\n", encoding="utf-8")
    assert main([*REQUIRED, "--output", str(out)]) == 1
    assert "was not written by detstack" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == "resources: [my-own.yaml]\n"
    assert sorted(p.name for p in out.iterdir()) == ["kustomization.yaml"]  # nothing written


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (kustomize built in)")
def test_kubectl_kustomize_builds_the_folder_into_the_rendered_objects(tmp_path):
    out = tmp_path / "k8s"
    assert main([*REQUIRED, "--output", str(out), "--service-monitor"]) == 0
    result = subprocess.run(
        ["kubectl", "kustomize", str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    built = list(yaml.safe_load_all(result.stdout))
    expected = render_manifests(
        K8sConfig("s3://my-bucket/model_repository", model="det", service_monitor=True)
    )

    def key(document: dict) -> tuple[str, str]:
        return document["kind"], document["metadata"]["name"]

    assert sorted(built, key=key) == sorted(expected, key=key)
