from raftsso_cli.main import main

main()
