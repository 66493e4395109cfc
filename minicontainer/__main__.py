import sys

from .network import wiring

if wiring.likely_needed(sys.argv[1:]):
    wiring.warm_up()  # before the CLI loads: a helper starts wiring the network now

from .cli import main  # noqa: E402

main()
