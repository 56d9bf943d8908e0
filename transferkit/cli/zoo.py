"""``transferkit zoo list|info|download|verify|remove|publish``.

``add_parser(subparsers)`` adds the ``zoo`` command to the main ``transferkit`` parser; ``python -m
transferkit.cli.zoo ARGS`` runs it on its own. Every handler returns an exit code: 0 success, 1 a zoo error
(printed on stderr without a traceback), 2 bad usage (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from transferkit import zoo
from transferkit.zoo.api import human_size
from transferkit.zoo.errors import ZooError


def _list(args: argparse.Namespace) -> int:
    names = zoo.list_models(args.pattern)
    if args.json:
        print(json.dumps([zoo.info(n).to_dict() for n in names], indent=2))
        return 0
    rows = [(n, (e := zoo.info(n)).modality, e.source, human_size(e.size, compact=True), e.integrity,
             "yes" if zoo.is_installed(n) else "") for n in names]
    header = ("NAME", "MODALITY", "SOURCE", "SIZE", "INTEGRITY", "CACHED")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _info(args: argparse.Namespace) -> int:
    entry = zoo.info(args.name)
    if args.json:
        print(json.dumps(entry.to_dict(), indent=2))
        return 0
    print(f"{entry.name}\n  {entry.description}")
    note = f" - {entry.integrity_note}" if entry.integrity_note else ""
    for label, value in (("modality", entry.modality), ("source", entry.source), ("arch", entry.arch),
                         ("licence", entry.licence), ("citation", entry.citation), ("homepage", entry.homepage),
                         ("integrity", entry.integrity + note),
                         ("size", human_size(entry.size, compact=True)), ("preprocessing", json.dumps(entry.preprocessing)),
                         ("recipe", json.dumps(entry.recipe)), ("metrics", json.dumps(entry.metrics)),
                         ("metrics source", entry.metrics_source), ("catalogue", entry.origin),
                         ("cached", "yes" if zoo.is_installed(entry.name) else "no")):
        if value:
            print(f"  {label + ':':15} {value}")
    if entry.hub:
        print(f"  {'hub:':15} {entry.hub.repo_id} @ {entry.hub.revision or '(unpinned)'} {list(entry.hub.files)}")
    for f in entry.files:
        member = f" -> {f.member}" if f.member else ""
        print(f"  {'file:':15} {f.path} ({human_size(f.size, compact=True)}, sha256 {f.sha256 or f.member_sha256 or 'unknown'})"
              f"{member}\n  {'':15} " + "\n  {:15} ".format("").join(f.urls))
    return 0


def _download(args: argparse.Namespace) -> int:
    path = zoo.download(args.name, force=args.force, progress=not args.no_progress,
                        trust_unverified=args.trust_unverified)
    print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = zoo.verify(args.name)
    print(report)
    return 0 if report else 1


def _remove(args: argparse.Namespace) -> int:
    removed = zoo.remove(args.name)
    print(f"removed {args.name}" if removed else f"{args.name} was not in the cache")
    return 0


def _publish(args: argparse.Namespace) -> int:
    metrics = json.loads(args.metrics) if args.metrics else None
    entry = zoo.publish(args.dir, args.root, name=args.name, licence=args.licence, citation=args.citation,
                        description=args.description, modality=args.modality, metrics=metrics,
                        overwrite=args.overwrite)
    print(f"published {entry.name} ({len(entry.files)} files) in {entry.origin}\n"
          f"use it with: transferkit zoo --catalogue {args.root} download {entry.name}")
    return 0


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            for source in args.catalogue or ():
                zoo.add_catalogue(source)
            return handler(args)
        except ZooError as e:
            print(f"transferkit zoo: error: {e}", file=sys.stderr)
            return 1
    return run


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``zoo`` command (and its sub-commands) to a ``transferkit`` subparsers object."""
    parser = subparsers.add_parser("zoo", help="list, download, verify, remove and publish pretrained models",
                                   description="The transferkit model zoo. Cache: $TRANSFERKIT_HOME/zoo; "
                                               "TRANSFERKIT_OFFLINE=1 never touches the network.")
    parser.add_argument("--catalogue", action="append", metavar="PATH_OR_URL",
                        help="an extra catalogue (file, published directory or URL); repeatable")
    commands = parser.add_subparsers(dest="zoo_command", metavar="COMMAND", required=True)

    p = commands.add_parser("list", help="list catalogue entries")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'bert/*' (default: all)")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.set_defaults(func=_guarded(_list))

    p = commands.add_parser("info", help="show one entry: files, checksums, licence, recipe, metrics")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guarded(_info))

    p = commands.add_parser("download", help="download and verify an entry; prints its local path")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    p.add_argument("--trust-unverified", action="store_true",
                   help="install files with no published sha256, recording their digest (trust on first use)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_guarded(_download))

    p = commands.add_parser("verify", help="re-hash a cached entry; exit code 1 if anything is wrong")
    p.add_argument("name")
    p.set_defaults(func=_guarded(_verify))

    p = commands.add_parser("remove", help="delete an entry from the cache")
    p.add_argument("name")
    p.set_defaults(func=_guarded(_remove))

    p = commands.add_parser("publish", help="publish a save_pretrained directory into a zoo root")
    p.add_argument("dir", help="directory written by save_pretrained")
    p.add_argument("--root", required=True, help="zoo root directory (catalogue.json and files/)")
    p.add_argument("--name", required=True, help="entry name, family/arch.tag")
    p.add_argument("--licence", default="unspecified")
    p.add_argument("--citation", default="")
    p.add_argument("--description", default="")
    p.add_argument("--modality", choices=("word_vectors", "text", "vision"),
                   help="default: config.json backbone.modality")
    p.add_argument("--metrics", help='reported metrics as JSON, e.g. \'{"sst2.accuracy": 0.91}\'')
    p.add_argument("--overwrite", action="store_true", help="replace an entry of the same name")
    p.set_defaults(func=_guarded(_publish))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``transferkit zoo ARGS`` stand-alone (``python -m transferkit.cli.zoo ARGS``)."""
    parser = argparse.ArgumentParser(prog="transferkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["zoo", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
