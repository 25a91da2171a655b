from ettcli.cli import main

main()
