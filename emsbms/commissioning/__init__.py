"""Bus discovery: scans that list the devices on a bus and the shipped profiles that fit them."""
