from agl.core.cli import main

main()
