-- MetalMart's own frontend ships three of the product images under other names than ours; the
-- catalogue now names those, so its frontend finds every image. The host serves its own images
-- under both names.
UPDATE products SET image_url = '/images/tshirt-classic1.svg' WHERE image_url = '/images/tshirt-classic.svg';
UPDATE products SET image_url = '/images/polo1.svg' WHERE image_url = '/images/polo.svg';
UPDATE products SET image_url = '/images/hoodie-zip1.svg' WHERE image_url = '/images/hoodie-zip.svg';
