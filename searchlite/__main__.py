from searchlite.cli.main import main

main()
