"""`python -m iotbridge_pi --config agent.toml` (also installed as `iotbridge-pi`)."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import signal
import sys
from pathlib import Path

from iotbridge_contract.stopflag import stopped_by_signals
from iotbridge_pi import config as agent_config
from iotbridge_pi.agent import Agent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iotbridge-pi", description="iotbridge device agent for a Raspberry Pi")
    parser.add_argument("--config", required=True, type=Path, help="agent.toml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = agent_config.load(args.config)
    except agent_config.ConfigError as exc:
        print(f"iotbridge-pi: {exc}", file=sys.stderr)
        return 2
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints every thread's stack
    agent = Agent(cfg)
    with stopped_by_signals(agent.stop):
        agent.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
