from envs.serve import main

main()
