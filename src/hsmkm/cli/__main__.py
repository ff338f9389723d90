"""python -m hsmkm.cli"""

from hsmkm.cli.main import main

main()
