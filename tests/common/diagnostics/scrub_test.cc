// The Scrubber of failure reports (common/diagnostics/scrub.h): what it removes, what it keeps, and its bound.
#include "common/diagnostics/scrub.h"

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fedtune::diagnostics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

Scrubber SiteScrubber() {
  SiteIdentifiers ids;
  ids.patients = {"patient00001", "MRN-4711", "KX93", "ab"};  // "ab": too short to be matched.
  ids.studies = {"study1", "S-77.2"};
  ids.accessions = {"ACC12345", "Acc 991"};  // With a space: searched as a substring.
  return Scrubber(ids);
}

TEST(ScrubTest, PlainStatusMessagesAreUnchanged) {
  const Scrubber scrubber = SiteScrubber();
  for (const char* text : {
           "DATA_LOSS: cannot decode image",
           "INVALID_ARGUMENT: config field 'finetune.batch_size': must be >= 1, got 0",
           "coordinator 127.0.0.1:50051: UploadUpdate: RESOURCE_EXHAUSTED: site call limit (4) reached",
           "training member 1/3, epoch 2/5",
           "fedtune 1.10.2 on cpu, 60 images, lr 0.05",
           "download of model 3f2a9c1e5b7d4a6f8e0c2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6 cancelled",
           "",
       }) {
    EXPECT_EQ(scrubber.Scrub(text), text);
  }
}

TEST(ScrubTest, AbsoluteAndRelativePaths) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("cannot open /srv/pacs/export/img.png: No such file or directory"),
            "cannot open <path>: No such file or directory");
  EXPECT_EQ(scrubber.Scrub("manifest data/manifest.csv line 3"), "manifest <path> line 3");
  EXPECT_EQ(scrubber.Scrub("see ./work/site.db and ../x and ~/fedtune/ca.pem."), "see <path> and <path> and <path>.");
  EXPECT_EQ(scrubber.Scrub("(/var/lib/fedtune/site.db)"), "(<path>)");
  EXPECT_EQ(scrubber.Scrub("file=/data/x.png, size 3"), "file=<path>, size 3");
}

TEST(ScrubTest, WindowsPaths) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("cannot read C:\\Users\\radiology\\cxr.dcm now"), "cannot read <path> now");
  EXPECT_EQ(scrubber.Scrub("on D:/exports/a.png"), "on <path>");
  EXPECT_EQ(scrubber.Scrub("share \\\\pacs01\\exports\\b.dcm"), "share <path>");
}

TEST(ScrubTest, QuotedPathsWithSpaces) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("image 'Chest X Rays/John Smith/view1 frontal.png': not a PNG"),
            "image '<path>': not a PNG");
  EXPECT_EQ(scrubber.Scrub("open \"/mnt/My Data/Jane Doe.dcm\" failed"), "open \"<path>\" failed");
  // An apostrophe before the quoted path does not swallow the text between.
  EXPECT_EQ(scrubber.Scrub("can't open '/data/A B/c.png'"), "can't open '<path>'");
  // A quoted message (": " inside) is scrubbed token by token, its words kept.
  EXPECT_EQ(scrubber.Scrub("detail: \"cannot open /x/y.png: denied\""), "detail: \"cannot open <path>: denied\"");
}

TEST(ScrubTest, PatientIdInsideAFileNameWithoutSlash) {
  const Scrubber scrubber = SiteScrubber();
  EXPECT_EQ(scrubber.Scrub("decoding view1_patient00001.png failed"), "decoding view1_<patient>.png failed");
  EXPECT_EQ(scrubber.Scrub("KX93_lateral.dcm"), "<patient>_lateral.dcm");
  const std::string out = scrubber.Scrub("image 'patient00001/study1/view1_frontal.jpg': /tmp/x/patient00001.jpg: bad");
  EXPECT_THAT(out, Not(HasSubstr("patient00001")));
  EXPECT_THAT(out, Not(HasSubstr("/")));
}

TEST(ScrubTest, SiteIdentifiersAreExactTokens) {
  const Scrubber scrubber = SiteScrubber();
  EXPECT_EQ(scrubber.identifier_count(), 7u);  // "ab" is dropped.
  EXPECT_EQ(scrubber.Scrub("patient MRN-4711 study S-77.2 accession ACC12345"),
            "patient <patient> study <study> accession <accession>");
  EXPECT_EQ(scrubber.Scrub("order Acc 991 done"), "order <accession> done");
  // Not whole tokens: left alone (KX930 is another token; "ab" is too short to be matched).
  EXPECT_EQ(scrubber.Scrub("KX930 and ab and kx93"), "KX930 and ab and kx93");
  // A site whose identifier is a placeholder's word does not break the placeholders.
  SiteIdentifiers odd;
  odd.patients = {"path"};
  EXPECT_EQ(Scrubber(odd).Scrub("path /a/b"), "<patient> <path>");
}

TEST(ScrubTest, ChexpertStyleIdsEvenWhenNotListed) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("patient64541 study2 Patient00007_view"), "<patient> <study> <patient>_view");
  // "study" as a word, and digits after a letter, stay.
  EXPECT_EQ(scrubber.Scrub("the study has 2 views; outpatient3"), "the study has 2 views; outpatient3");
}

TEST(ScrubTest, DicomUids) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("SOPInstanceUID 1.2.840.113619.2.55.3.604688119.969.1268071029.320 is not frontal"),
            "SOPInstanceUID <uid> is not frontal");
  EXPECT_EQ(scrubber.Scrub("study=2.25.329800735698586629295641978511506172918."), "study=<uid>.");
  EXPECT_EQ(scrubber.Scrub("transfer syntax 1.2.840.10008.1.2.4.90 unsupported"), "transfer syntax <uid> unsupported");
  // IPv4 addresses and short version numbers stay.
  EXPECT_EQ(scrubber.Scrub("ipv4:10.0.12.7:443 v2.1.0"), "ipv4:10.0.12.7:443 v2.1.0");
}

TEST(ScrubTest, LongDigitRuns) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("MRN1234567 visit 20240131 id 12345"), "MRN<number> visit <number> id 12345");
  EXPECT_EQ(scrubber.Scrub("received 1048576 bytes"), "received <number> bytes");
}

TEST(ScrubTest, OutputIsBoundedWithAMarker) {
  const Scrubber scrubber;
  const std::string long_text(5000, 'x');
  const std::string out = scrubber.Scrub(long_text, 100);
  EXPECT_EQ(out.size(), 100u);
  EXPECT_TRUE(absl::EndsWith(out, kCutMarker));
  // The cut never splits a UTF-8 character.
  std::string utf8;
  for (int i = 0; i < 100; ++i) utf8 += "\xc3\xa9";  // "é"
  const std::string cut = scrubber.Scrub(utf8, 50);
  EXPECT_LE(cut.size(), 50u);
  const std::string kept = cut.substr(0, cut.size() - kCutMarker.size());
  EXPECT_EQ(kept.size() % 2, 0u);
  EXPECT_EQ(scrubber.Scrub("short", 100), "short");
  EXPECT_EQ(scrubber.Scrub("abcdef", 3), std::string(kCutMarker.substr(0, 3)));
}

TEST(ScrubTest, HugeInputIsCutAtWhitespaceNotInsideAnIdentifier) {
  const Scrubber scrubber;
  // The input bound falls inside a 9-digit run: the run must not come out as a short number.
  std::string text(kMaxInputBytes - 4, 'a');
  text += " 123456789 tail";
  const std::string out = scrubber.Scrub(text, kMaxInputBytes * 2);
  EXPECT_EQ(out, absl::StrCat(std::string(kMaxInputBytes - 4, 'a'), kCutMarker));
}

// The image decoders' "PATH: not a decodable image" (common/imaging/decode.cc) with the path unquoted.
TEST(ScrubTest, TheSitesOwnPathsGoAsAWholeWithSpacesApostrophesAndBrackets) {
  SiteIdentifiers ids;
  ids.paths = {"/srv/PACS/",
               "/srv/PACS/Doe John Q/IM1.png",
               "Doe John Q/IM1.png",
               "/data/O'Brien Mary/x.png",
               "/data/Smith (Jane)/y.png",
               "work",
               "a.b"};  // The last two: too short, ignored.
  const Scrubber scrubber(ids);
  EXPECT_EQ(scrubber.path_count(), 5u);
  EXPECT_EQ(scrubber.Scrub("/srv/PACS/Doe John Q/IM1.png: not a decodable image"), "<path>: not a decodable image");
  EXPECT_EQ(scrubber.Scrub("image 'Doe John Q/IM1.png': /srv/PACS/Doe John Q/IM1.png: not a decodable image"),
            "image '<path>': <path>: not a decodable image");
  EXPECT_EQ(scrubber.Scrub("/data/O'Brien Mary/x.png: not a decodable image"), "<path>: not a decodable image");
  EXPECT_EQ(scrubber.Scrub("/data/Smith (Jane)/y.png: not a decodable image"), "<path>: not a decodable image");
  // A file of the site's folder that the manifest does not name: the rest of the path goes with the folder.
  EXPECT_EQ(scrubber.Scrub("/srv/PACS/Roe Richard/IM 2.png: not a decodable image"), "<path>: not a decodable image");
  EXPECT_EQ(scrubber.Scrub("filesystem error: cannot open: No such file [/srv/PACS/Roe Richard/a b.png] done."),
            "filesystem error: cannot open: No such file [<path>] done.");
  // Not the site's folder ("/srv/PACS2"), and the words "work" and "a.b": left to the generic rules.
  EXPECT_EQ(scrubber.Scrub("at /srv/PACS2/x.png: work on a.b"), "at <path>: work on a.b");
}

TEST(ScrubTest, ApostrophesBetweenLettersAndBracketsInGenericPaths) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("/data/O'Brien/x.png: not a decodable image"), "<path>: not a decodable image");
  EXPECT_EQ(scrubber.Scrub("image '/data/O'Brien Mary/x.png': bad"), "image '<path>': bad");
  EXPECT_EQ(scrubber.Scrub("filesystem error: cannot open: No such file [/data/Doe John/x.png]"),
            "filesystem error: cannot open: No such file [<path>]");
  EXPECT_EQ(scrubber.Scrub("can't read [INFO] it's"), "can't read [INFO] it's");
}

TEST(ScrubTest, IdentifiersInAngleBrackets) {
  const Scrubber scrubber = SiteScrubber();
  EXPECT_EQ(scrubber.Scrub("unknown id <MRN-4711>"), "unknown id <<patient>>");
  EXPECT_EQ(scrubber.Scrub("<KX93> <S-77.2> <Acc 991>"), "<<patient>> <<study>> <<accession>>");
  // A placeholder's own word stays a placeholder.
  SiteIdentifiers odd;
  odd.patients = {"number", "Joe Bloggs"};
  odd.studies = {"patient"};
  EXPECT_EQ(Scrubber(odd).Scrub("<number> <patient> number <Joe Bloggs>"), "<number> <patient> <patient> <<patient>>");
}

TEST(ScrubTest, InvalidUtf8BecomesQuestionMarks) {
  const Scrubber scrubber;
  EXPECT_EQ(scrubber.Scrub("bad \xff\xfe name \xc3\xa9t\xc3 \xe2\x82 \xed\xa0\x80 \xc0\xaf ok \xf0\x9f\x98\x80"),
            "bad ?? name \xc3\xa9t? ?? ??? ?? ok \xf0\x9f\x98\x80");
  // Then the other rules, as for any text.
  EXPECT_EQ(scrubber.Scrub("MRN\xff"
                           "1234567 /data/\xfe"
                           "x.png"),
            "MRN?<number> <path>");
}

TEST(ScrubTest, FullIdsWithSlashesAreNotKeptAsUnusualIds) {
  SiteIdentifiers ids;
  for (int i = 0; i < 1500; ++i) ids.studies.push_back(absl::StrCat("P", i, "/s1"));
  ids.accessions = {"Acc 991"};
  const Scrubber scrubber(ids);
  EXPECT_EQ(scrubber.identifier_count(), 1u);
  EXPECT_EQ(scrubber.Scrub("order Acc 991 done"), "order <accession> done");
}

TEST(ScrubTest, EverythingAtOnce) {
  const Scrubber scrubber = SiteScrubber();
  const std::string message = absl::StrCat(
      "INVALID_ARGUMENT: image 'patient00001/study1/view1_frontal.png': /home/it/chexpert/train/patient00001/study1/"
      "view1_frontal.png: not an image (SOP 1.2.840.113619.2.55.3.604688119 of MRN 00123456, accession ACC12345)");
  const std::string out = scrubber.Scrub(message);
  EXPECT_EQ(out,
            "INVALID_ARGUMENT: image '<path>': <path>: not an image (SOP <uid> of MRN <number>, accession "
            "<accession>)");
}

}  // namespace
}  // namespace fedtune::diagnostics
