// The program of engine/CMakeLists.txt's layer link checks: it only has to link.
int main() { return 0; }
