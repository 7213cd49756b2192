/* The SDK's implementation, compiled beside Zig code that @cImports spacedrive.h. */
#define SPACEDRIVE_IMPLEMENTATION
#include "spacedrive.h"
