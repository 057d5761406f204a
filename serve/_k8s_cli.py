"""``detstack deploy k8s``: Kubernetes manifests for a Triton fleet on an S3 model repository.

Renders plain YAML (no Helm or kustomize needed to render; ``kubectl apply -k`` reads the
folder as is). The walk from one machine to a cluster is in ``docs/scale.md``.

Example:
    $ detstack deploy k8s --repository s3://models/detection --model my-detection-model \\
          --namespace vision --max 8 | kubectl apply -f -
    $ detstack deploy k8s --repository s3://models/detection --model my-detection-model \\
          --output deploy/k8s/triton
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve._config import DEFAULT_IMAGE
from serve._k8s_config import DEFAULT_S3_SECRET, DEFAULT_TOKEN_SECRET, SERVICE_TYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``deploy`` and its ``k8s`` subcommand to ``subparsers``."""
    deploy = subparsers.add_parser(
        "deploy",
        help="render deployment manifests for a fleet of Triton servers (Kubernetes)",
        description="Render deployment manifests for a fleet of Triton servers.",
    )
    targets = deploy.add_subparsers(dest="target", metavar="TARGET", required=True)
    parser = targets.add_parser(
        "k8s",
        help="Kubernetes: Deployment, Services, autoscaler, disruption budget (or KServe)",
        description=(
            "Render Kubernetes manifests for Triton servers on GPUs reading one model repository "
            "on S3 (the GPU flavour, configs/gpu.pbtxt): a ConfigMap with the entrypoint, a "
            "Deployment with probes on /v2/health/*, GPU limits, S3 credentials and the API "
            "token from Secrets (never in the manifest), a public Service (HTTP, gRPC), a "
            "headless Service (every pod, for clients that spread load), a metrics Service and "
            "a NetworkPolicy that lets only Prometheus reach the metrics port, a "
            "HorizontalPodAutoscaler on Triton's average queue time (through the Prometheus "
            "adapter; its rule is written with --output DIR) and a PodDisruptionBudget. With "
            "--kserve: a KServe InferenceService on its Triton runtime instead. Create the "
            f"Secrets first: kubectl create secret generic {DEFAULT_S3_SECRET} "
            "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=...; "
            f"kubectl create secret generic {DEFAULT_TOKEN_SECRET} --from-file=token=token.txt. "
            "See docs/scale.md."
        ),
    )
    parser.add_argument(
        "--repository",
        required=True,
        metavar="S3_URL",
        help="the model repository on S3, s3://bucket/prefix (what detstack export wrote, "
        "uploaded as is)",
    )
    parser.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="the model every pod must serve before it counts as started (startup probe on "
        "/v2/models/NAME/ready); Triton serves every model of the repository",
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="name of the Deployment, Services and the rest (default: derived from --model)",
    )
    parser.add_argument(
        "--namespace", default="default", help="namespace of every object (default: %(default)s)"
    )
    parser.add_argument(
        "--s3-secret",
        default=DEFAULT_S3_SECRET,
        metavar="NAME",
        help="Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optional "
        "AWS_SESSION_TOKEN, AWS_DEFAULT_REGION), passed to Triton as environment variables "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help="http(s)://host:port of an S3-compatible store (MinIO, ...); default: AWS S3. "
        "Not with --kserve (annotate the Secret instead, see docs/scale.md)",
    )
    parser.add_argument(
        "--token-secret",
        default=DEFAULT_TOKEN_SECRET,
        metavar="NAME",
        help="Secret with the API token under the key 'token', mounted as a file and read by "
        "the entrypoint (KServe: an environment variable) (default: %(default)s)",
    )
    size = parser.add_argument_group(
        "size (a fixed --replicas, or an autoscaler from --min to --max)"
    )
    size.add_argument(
        "--replicas",
        type=int,
        metavar="N",
        help="run exactly N pods, with no autoscaler (default: autoscale from --min to --max)",
    )
    size.add_argument(
        "--min",
        dest="min_replicas",
        type=int,
        metavar="N",
        help="fewest pods the autoscaler keeps (default: 1)",
    )
    size.add_argument(
        "--max",
        dest="max_replicas",
        type=int,
        metavar="N",
        help="most pods the autoscaler starts (default: 4)",
    )
    size.add_argument(
        "--target-queue-ms",
        type=float,
        default=50.0,
        metavar="MS",
        help="add pods when requests wait longer than this on average in Triton's queue "
        "(nv_inference_queue_duration_us over nv_inference_request_success, per pod) "
        "(default: %(default)s)",
    )
    pod = parser.add_argument_group("pod")
    pod.add_argument(
        "--image",
        default=DEFAULT_IMAGE,
        help="NVIDIA's Triton image (with --kserve only its tag is used, as runtimeVersion) "
        "(default: %(default)s)",
    )
    pod.add_argument(
        "--gpus",
        type=int,
        default=1,
        metavar="N",
        help="GPUs per pod, the nvidia.com/gpu limit; Triton puts a model instance on each "
        "(default: %(default)s)",
    )
    pod.add_argument(
        "--cpu",
        default="4",
        help="CPU request per pod; no CPU limit, so the GPU is never starved "
        "(default: %(default)s)",
    )
    pod.add_argument(
        "--memory", default="16Gi", help="memory request and limit per pod (default: %(default)s)"
    )
    pod.add_argument(
        "--exit-timeout",
        type=int,
        default=30,
        metavar="SECONDS",
        help="how long in-flight requests may take to finish when a pod stops "
        "(default: %(default)s)",
    )
    network = parser.add_argument_group("network and monitoring")
    network.add_argument(
        "--service-type",
        choices=SERVICE_TYPES,
        default="ClusterIP",
        help="type of the public Service (HTTP 8000, gRPC 8001) (default: %(default)s)",
    )
    network.add_argument(
        "--prometheus-namespace",
        default="monitoring",
        metavar="NAMESPACE",
        help="namespace of Prometheus and its adapter: the only one the NetworkPolicy lets "
        "reach the metrics port (8002), and where the adapter rule's ConfigMap goes "
        "(default: %(default)s)",
    )
    network.add_argument(
        "--service-monitor",
        action="store_true",
        help="also render a prometheus-operator ServiceMonitor for the metrics Service",
    )
    parser.add_argument(
        "--kserve",
        action="store_true",
        help="render a KServe InferenceService (serving.kserve.io/v1beta1, Triton runtime) and "
        "its ServiceAccount instead of the Deployment and its objects",
    )
    parser.add_argument(
        "--output",
        default="-",
        metavar="DIR|-",
        help="'-': print one YAML stream (for kubectl apply -f -); DIR: one file per object, "
        "a kustomization.yaml and prometheus-adapter/ (files not written by detstack are "
        "never overwritten) (default: %(default)s)",
    )
    parser.set_defaults(handler=_handle_k8s)


def _handle_k8s(args: argparse.Namespace) -> int:
    from serve._k8s import render_manifests
    from serve._k8s_config import K8sConfig
    from serve._k8s_output import ADAPTER_DIR, to_yaml, write_manifests

    config = K8sConfig(
        repository=args.repository,
        model=args.model,
        name=args.name,
        namespace=args.namespace,
        image=args.image,
        s3_secret=args.s3_secret,
        s3_endpoint_url=args.s3_endpoint_url,
        token_secret=args.token_secret,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        target_queue_ms=args.target_queue_ms,
        service_type=args.service_type,
        prometheus_namespace=args.prometheus_namespace,
        service_monitor=args.service_monitor,
        kserve=args.kserve,
        exit_timeout_s=args.exit_timeout,
    )
    if args.output == "-":
        sys.stdout.write(to_yaml(render_manifests(config)))
        sys.stdout.flush()
        return 0
    written = write_manifests(config, Path(args.output))
    print(f"Wrote {len(written)} files to {args.output}:")
    for path in written:
        print(f"  {path}")
    print(f"Apply: kubectl apply -k {args.output}")
    if not config.kserve:
        adapter = Path(args.output) / ADAPTER_DIR
        print(f"Prometheus adapter rule (once per cluster, see docs/scale.md): {adapter}")
    return 0
