from labmw.cli import main

main()
