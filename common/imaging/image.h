// The decoded grayscale image that every fedtune image path produces: PNG,
// JPEG, TIFF and DICOM files all become an Image of floats in [0, 1] where 1 is
// the brightest display value, i.e. the most attenuating tissue (bone white).
// The type carries no OpenCV or DCMTK types so that any library may include it.
#ifndef FEDTUNE_COMMON_IMAGING_IMAGE_H_
#define FEDTUNE_COMMON_IMAGING_IMAGE_H_

#include <string>
#include <vector>

namespace fedtune::imaging {

// A single-channel image. Value semantics; copying copies the pixels.
struct Image {
  int width = 0;
  int height = 0;
  // Row-major, width * height values in [0, 1]; 0 = black (least attenuating),
  // 1 = white (most attenuating).
  std::vector<float> pixels;

  // Where the values came from, for messages and `data convert`.
  // The decoded file.
  std::string path;
  // "png", "jpeg", "tiff", "bmp", "dicom", ... (by content).
  std::string format;
  // Precision of the source samples: 8 or 16 for raster files, BitsStored for
  // DICOM.
  int bits = 0;
  // A colour raster file was converted to luminance (never for DICOM).
  bool converted_from_color = false;
  // What was applied, e.g. "DICOM MONOCHROME1, ..., window C=600 W=1600,
  // inverted"; may be empty.
  std::string description;

  float at(int x, int y) const { return pixels[static_cast<size_t>(y) * width + x]; }
};

}  // namespace fedtune::imaging

#endif  // FEDTUNE_COMMON_IMAGING_IMAGE_H_
