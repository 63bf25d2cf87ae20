"""``taskdeck k8s install|uninstall``: put on a cluster (or print, ``--dry-run``) what the Kubernetes backend
needs: the TaskAction CRD, a ServiceAccount with exactly the RBAC the engine uses, and with ``--in-cluster`` a
Deployment and Service for the engine itself."""

from __future__ import annotations

import argparse

from engine.k8s_install import DEFAULT_NAMESPACE, InstallError, apply, cluster_client, manifests, remove, render


def add_parser(command) -> None:
    k8s = command("k8s", help="install the Kubernetes backend's CRD and RBAC on a cluster (or print them), or "
                              "remove them",
                  description="Applies with your kubeconfig (--kubeconfig, --context); --namespace is where the "
                              "engine's TaskActions will live (default: the context's, as the engine's; with "
                              f"--dry-run, {DEFAULT_NAMESPACE}).")
    k8s.add_argument("action", choices=["install", "uninstall"])
    k8s.add_argument("--dry-run", action="store_true", help="print the manifests as YAML instead of applying them")
    k8s.add_argument("--image", default="python:3.11-slim",
                     help="with --in-cluster: the engine's image (one with taskdeck installed)")
    k8s.add_argument("--delete-namespace", action="store_true", help="with uninstall: the namespace too")


def cmd_k8s(args: argparse.Namespace) -> int:
    tasks_on = getattr(args, "tasks_on", None) or "processes"  # --tasks-on pods: the RBAC for task pods too
    raw_data = getattr(args, "raw_data", None)  # with --in-cluster: the engine's --raw-data
    try:
        if args.dry_run:
            print(render(manifests(args.namespace or DEFAULT_NAMESPACE, in_cluster=args.in_cluster,
                                   image=args.image, tasks_on=tasks_on, raw_data=raw_data)), end="")
            return 0
        api_client, context_namespace = cluster_client(args.kubeconfig, args.context)
        # the namespace the engine would use with the same options: given, else the context's
        objects = manifests(args.namespace or context_namespace, in_cluster=args.in_cluster, image=args.image,
                            tasks_on=tasks_on, raw_data=raw_data)
        with api_client:
            if args.action == "install":
                lines = apply(api_client, objects)
            else:
                lines = remove(api_client, objects, keep_namespace=not args.delete_namespace)
    except InstallError as exc:
        raise K8sCommandError(str(exc)) from None
    for line in lines:
        print(line)
    return 0


class K8sCommandError(Exception):
    pass
