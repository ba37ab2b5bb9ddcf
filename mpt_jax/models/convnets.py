"""Conv-2/4/6/8, Conv-nWide and VGG-Small families (SPEC 5.1-5.3). To be written."""
