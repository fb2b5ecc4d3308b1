package ailb
