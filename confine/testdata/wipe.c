/* The C init's wipe alone, for confine's TestWipeFollowsNoSwappedLink:
 * wipe DIR empties DIR as the init empties a cell's tmpfs at its end. */
#define main cellgate_init_main
#include "../../cmd/cellgate-init/cellgate-init.c"
#undef main

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	wipe(argv[1]);
	return 0;
}
