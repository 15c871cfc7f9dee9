from mcrouter.cli import main

main()
