from streamproxy.cli import main

main()
