from envs.server.serve import main

main()
