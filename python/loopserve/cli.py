"""The `loopserve` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from loopserve.commands import COMMAND_MODULES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loopserve", description="A closed-loop model server.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the closed loop end to end: train, serve, drift, retrain, canary, promote")
    demo.add_argument("--workdir", default="demo-run", help="where the demo writes its store, models and report")
    demo.add_argument("--port", type=int, default=8000, help="port to serve on")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster run")
    demo.add_argument("--replicas", type=int, default=1,
                      help="run the loop as a fleet: this many servers on --port, --port+1, ... sharing one "
                           "lifecycle store (PostgreSQL when one can be started here, else SQLite)")
    demo.add_argument("--hotswap", action="store_true", help="the serving-only demo: a new version swapped in under load")
    demo.add_argument("--seconds", type=float, default=8.0, help="--hotswap: how long to drive traffic")
    demo.add_argument("--concurrency", type=int, default=16, help="--hotswap: concurrent HTTP clients")

    serve = sub.add_parser("serve", help="serve models over HTTP (the Open Inference Protocol)")
    serve.add_argument("--config", help="server config file (YAML, TOML or JSON)")
    serve.add_argument("--model-repository", help="model repository directory (overrides the config)")
    serve.add_argument("--host", help="address to listen on (overrides the config)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides the config)")
    serve.add_argument("--workers", type=int, help="HTTP front-end processes (overrides the config's workers)")
    serve.add_argument("--native-infer", action=argparse.BooleanOptionalAction, default=None,
                       help="the engine answers infer requests natively, or not (sets http.native_infer; "
                            "unset: on with more than one worker)")

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:  # a missing dependency inside the module is a real error
                raise
            continue  # an area not built yet
        module.register(sub)

    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return handler(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        if args.hotswap:
            from loopserve.demo.hotswap import run_demo as run_hotswap_demo

            return run_hotswap_demo(args.workdir, args.seconds, args.concurrency, args.port)
        from loopserve.demo import run_demo

        if args.replicas < 1:
            parser.error(f"--replicas {args.replicas}: expected 1 or more servers")
        return run_demo(args.workdir, args.port, args.quick, args.replicas)
    return 2


def _serve(args) -> int:
    import msgspec

    from loopserve.errors import LoopserveError
    from loopserve.server.config import ServerConfig, load_server_config
    from loopserve.server.main import serve

    try:
        config = load_server_config(args.config) if args.config else ServerConfig()
        http = config.http
        http = msgspec.structs.replace(http, host=args.host or http.host,
                                       port=args.port if args.port is not None else http.port,
                                       native_infer=http.native_infer if args.native_infer is None
                                       else args.native_infer)
        config = msgspec.structs.replace(config, http=http,
                                         model_repository=args.model_repository or config.model_repository,
                                         workers=args.workers or config.workers)
        if not config.model_repository and not any(not isinstance(m, str) for m in config.models):
            raise LoopserveError("no models: pass --model-repository DIR, or set model_repository or "
                                 "registry models (models: [{name, source: registry://NAME@ALIAS}]) in the --config file")
        return serve(config)
    except LoopserveError as e:
        print(f"loopserve serve: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
