// A C++ program that leans on the standard containers the way application code does:
// an ordered word index, a hash table of counters, a vector of records holding strings,
// and a growing report string.  check_real.py profiles it with allocprof and with DHAT
// and expects the same figures and these functions at the top of the profile.
//
//   cxx_containers [ROUNDS]      (default 4; prints one line of checksums)
//
// Deterministic: no clocks, no randomness, no hashing of pointers.
//
// SPDX-License-Identifier: MIT OR Apache-2.0

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

namespace real {

struct Record {
        std::string name;
        std::string city;
        std::vector<int> scores;
};

// A word generator with a fixed seed, so that every run sees the same text.
class Words {
public:
        explicit Words(unsigned seed) : state_(seed) {}

        std::string next()
        {
                static const char *const syllables[] = {"ka", "lo", "mi", "ne", "ru",
                                                        "sa", "ti", "vo", "zen", "quar"};
                std::string w;
                unsigned n = 1 + step() % 4;
                for (unsigned i = 0; i < n; i++)
                        w += syllables[step() % 10];
                return w;
        }

private:
        unsigned step()
        {
                state_ = state_ * 1103515245u + 12345u;
                return (state_ >> 16) & 0x7fff;
        }
        unsigned state_;
};

// Ordered index: word -> positions where it occurs.  One tree node per distinct word
// (a std::string key and a std::vector<int> that grows by doubling).
__attribute__((noinline)) std::map<std::string, std::vector<int>> build_word_index(int n)
{
        std::map<std::string, std::vector<int>> index;
        Words words(7);
        for (int i = 0; i < n; i++)
                index[words.next()].push_back(i);
        return index;
}

// Hash table of bigram counts; rehashes as it grows.
__attribute__((noinline)) std::unordered_map<std::string, long> count_bigrams(int n)
{
        std::unordered_map<std::string, long> counts;
        Words words(11);
        std::string prev = words.next();
        for (int i = 0; i < n; i++) {
                std::string cur = words.next();
                counts[prev + " " + cur] += i % 7;
                prev = std::move(cur);
        }
        return counts;
}

// A vector of records, each with two heap strings (longer than the small-string buffer)
// and a vector of scores.
__attribute__((noinline)) std::vector<Record> make_records(int n)
{
        std::vector<Record> out;
        Words words(3);
        for (int i = 0; i < n; i++) {
                Record r;
                r.name = "person-" + words.next() + "-" + std::to_string(i) + "-with-a-long-name";
                r.city = "city-of-" + words.next() + "-on-the-river-" + std::to_string(i % 97);
                for (int j = 0; j < i % 13; j++)
                        r.scores.push_back(j * i);
                out.push_back(std::move(r));
        }
        return out;
}

// One big string built line by line.
__attribute__((noinline)) std::string render_report(const std::map<std::string, std::vector<int>> &index)
{
        std::string text;
        for (const auto &kv : index) {
                text += kv.first;
                text += ": ";
                text += std::to_string(kv.second.size());
                text += '\n';
        }
        return text;
}

// Kept until exit and never freed: what a leak report should show.
static std::vector<std::string> *kept_names;

__attribute__((noinline)) void keep_some_names(const std::vector<Record> &records)
{
        kept_names = new std::vector<std::string>();
        for (size_t i = 0; i < records.size(); i += 50)
                kept_names->push_back(records[i].name);
}

} // namespace real

int main(int argc, char **argv)
{
        int rounds = argc > 1 ? std::atoi(argv[1]) : 4;
        unsigned long sum = 0;
        for (int r = 0; r < rounds; r++) {
                auto index = real::build_word_index(20000);
                auto bigrams = real::count_bigrams(20000);
                auto records = real::make_records(5000);
                std::string report = real::render_report(index);
                if (r == rounds - 1)
                        real::keep_some_names(records);
                sum += index.size() + bigrams.size() + records.size() + report.size();
        }
        std::printf("%lu %zu\n", sum, real::kept_names ? real::kept_names->size() : (size_t)0);
        return 0;
}
